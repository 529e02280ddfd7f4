"""Runs the `Example:` blocks of every kd_jax.losses docstring (issue #31, part 3).

Each public loss shows a small input and its value, checked by hand or NumPy when written;
running them here keeps those examples true when a signature or a formula changes.
"""
import doctest
import importlib
import pkgutil

import pytest

import kd_jax.losses

MODULES = sorted(info.name for info in pkgutil.iter_modules(kd_jax.losses.__path__,
                                                             "kd_jax.losses."))


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS,
                           raise_on_error=False, verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_public_loss_has_an_example():
  finder = doctest.DocTestFinder()
  missing = [name for name in kd_jax.losses.__all__
             if not any(test.examples for test in finder.find(getattr(kd_jax.losses, name)))]
  assert not missing, f"no doctest example in: {missing}"
