"""The loss figure's discriminator panel (salgan/figures.py), read back from the figure's own data."""

import pytest

from salgan.figures import loss_curves, loss_figure

BCE = {"phase": "bce", "g_loss": 0.3, "content_loss": 0.3, "d_loss": None, "val_content_loss": 0.25}
NO_DIAGNOSTICS = {"d_accuracy": None, "d_real": None, "d_fake": None, "d_dead_units": None}


def history():
    records = [{"epoch": 1, **BCE, **NO_DIAGNOSTICS}, {"epoch": 2, **BCE, **NO_DIAGNOSTICS}]
    for epoch, accuracy in ((3, 0.55), (4, 0.7)):
        records.append(
            {"epoch": epoch, **BCE, "phase": "adversarial", "d_loss": 0.69, "d_accuracy": accuracy}
            | {"d_real": accuracy, "d_fake": 1 - accuracy, "d_dead_units": 0.01 * epoch}
        )
    return records


def curves(axis) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}


def test_the_discriminator_panel_beside_the_losses_plots_the_adversarial_epochs_diagnostics(tmp_path):
    figure = loss_figure(history())
    losses, gan = figure.axes
    assert set(curves(losses)) == {"g_loss", "content_loss", "d_loss", "val_content_loss"}
    plotted = curves(gan)
    assert plotted["D accuracy"] == ([3, 4], [0.55, 0.7])
    assert plotted["mean D(real)"] == ([3, 4], [0.55, 0.7])
    assert plotted["mean D(fake)"][1] == pytest.approx([0.45, 0.3])
    assert plotted["dead D units"][1] == pytest.approx([0.03, 0.04])
    assert plotted["chance (accuracy 0.5)"][1] == [0.5, 0.5]
    loss_curves(history(), tmp_path / "losses.png")
    from PIL import Image

    assert Image.open(tmp_path / "losses.png").size[0] == 1200  # two panels side by side


def test_a_bce_only_history_has_the_losses_alone():
    records = history()[:2]
    assert len(loss_figure(records).axes) == 1
    assert len(loss_figure([{k: v for k, v in r.items() if not k.startswith("d_")} for r in records]).axes) == 1
