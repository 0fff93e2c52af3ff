"""The torch-free CLIP tokenizer gives open_clip's token ids, exactly."""
from __future__ import annotations

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from compsearch.mapping.onnx.tokenizer import ClipTokenizer

CORPUS = [
    "a photo of a red circle", "Striped, plain & dotted!", "", "   ", "x",
    "café naïve – “quoted” ﬁne déjà vu", "東京タワー 123 ４５６", "Ελληνικά, русский, עברית, العربية",
    "it's they'll I'd we've you're she'd", "😀 emoji 👍🏽 🇫🇷", "ＦＵＬＬＷＩＤＴＨ letters",
    "tabs\tand\nnew lines\r\n  spaced   out", "&amp;lt;b&amp;gt; html &quot;entities&quot;",
    "<start_of_text> literal specials <end_of_text>", "mojibake: cafÃ©", "3.14159 + 2,718 = 5.86%",
    "supercalifragilisticexpialidocious antidisestablishmentarianism", "#hashtag @mention http://x.io/a?b=c",
    "a " * 80, "long " + "and longer " * 40, "UPPER lower MiXeD",
]


@pytest.mark.parametrize("context_length", [77, 16, 5])
def test_token_ids_equal_open_clips(context_length: int) -> None:
    ours = ClipTokenizer(context_length)(CORPUS)
    theirs = SimpleTokenizer(context_length=context_length)(CORPUS).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(CORPUS), context_length)
    np.testing.assert_array_equal(ours, theirs)


def test_a_long_text_is_cut_to_the_context_and_still_ends() -> None:
    tokenizer = ClipTokenizer(8)
    row = tokenizer(["one two three four five six seven eight nine ten"])[0]
    assert row[0] == tokenizer.start and row[-1] == tokenizer.end and (row != 0).all()
