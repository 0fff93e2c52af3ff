"""Installs the three top-level folders as one namespace, ``compsearch.mapping``,
``compsearch.indexer`` and ``compsearch.search`` (the repository's layout keeps them at the
top; installed as they are, ``mapping`` and ``indexer`` would collide with other packages).
Everything else about the package is in pyproject.toml."""
from setuptools import find_packages, setup

PARTS = ("mapping", "indexer", "search")

packages = ["compsearch"]
package_dir = {"compsearch": "compsearch"}
for part in PARTS:
    packages += [f"compsearch.{part}"] + [f"compsearch.{part}.{sub}" for sub in find_packages(part)]
    package_dir[f"compsearch.{part}"] = part

setup(packages=packages, package_dir=package_dir)
