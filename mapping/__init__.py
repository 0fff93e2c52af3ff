"""The model side: loading ViTs and CLIP, RepDecompose, CompAlign, property scoring."""
