"""Console output: every Lightning line once (through the root handler), no advertisements, no pytree noise."""

from __future__ import annotations

import logging
import warnings


def test_lightning_lines_appear_once_and_adverts_are_dropped(caplog, capfd):
    import lightning.pytorch  # noqa: F401  (installs Lightning's own console handler)
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from mammokit.utils.console import tidy_third_party_output

    assert logging.getLogger().handlers  # pytest's capture handler plays the CLI's root handler
    tidy_third_party_output()
    tidy_third_party_output()  # idempotent
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        rank_zero_info("GPU available: False")
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/x/)")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]  # once, and no advert
    assert "GPU available" not in capfd.readouterr().err  # Lightning's own handler no longer prints it again
    assert not [h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler]


def test_pytree_deprecation_is_silenced():
    from mammokit.utils.console import tidy_third_party_output

    tidy_third_party_output()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        tidy_third_party_output()  # re-applies the filter inside this block
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something a user can act on", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something a user can act on"]
