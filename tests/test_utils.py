import pytest
from torch import nn

from rswb.utils import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_even_after_an_error(training):
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train(training)
    with eval_mode(m) as same:
        assert same is m and not m.training and not m[1].training
    assert m.training == training
    with pytest.raises(RuntimeError), eval_mode(m):
        raise RuntimeError("boom")
    assert m.training == training


def test_progress_bars_block_turns_every_bar_off_and_nests():
    from rswb.utils import progress_bars, show_progress

    assert show_progress() and not show_progress(False)
    with progress_bars(False):
        assert not show_progress(True)
        with progress_bars(True):  # an inner block cannot turn bars back on
            assert not show_progress(True)
    assert show_progress(True)
