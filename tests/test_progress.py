"""What ``intrada fit / validate / predict`` print: iteration progress with an ETA and the main
losses (a tqdm bar on a terminal, plain lines in a log), and the results of every validation."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import fit_config, write_yaml
from intrada_pl.cli import main
from intrada_pl.data.labels import CLASS_NAMES
from intrada_pl.progress import ConsoleProgressBar

INTER = "intrada_pl.stages.inter.InterDomainModule"


def test_fit_prints_iteration_lines_and_a_results_table_after_every_validation(toy_root, tmp_path, capsys):
    config = fit_config(toy_root, tmp_path, stage=INTER, schedule_steps=4, eval_subsets=["19", "16", "13"])
    config["trainer"].update(enable_progress_bar=True, log_every_n_steps=2)  # captured stdout is no terminal: plain lines
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    out = capsys.readouterr().out

    assert "\r" not in out
    progress = re.findall(r"^iteration (\d+)/(\d+) \((\S+)%\) \S+ it/s ETA \S+ (.*)$", out, re.MULTILINE)
    assert [(k, total, pct) for k, total, pct, _ in progress] == [("2", "4", "50.0"), ("4", "4", "100.0")]
    for *_, losses in progress:  # the main terms of ADVENT, by short name, with the stage's prog_bar lr
        values = dict(zip(losses.split()[::2], map(float, losses.split()[1::2])))
        assert {"loss_seg_main", "loss_adv_main", "loss_d_main", "lr"} <= set(values)
        assert "loss_seg_aux" not in values

    # two validations (the sanity check prints none), each right after its iteration's line
    tables = re.findall(r"^validation at iteration (\d+)\n((?:.+\n)+?)best mIoU (\S+) at iteration (\d+)$", out, re.MULTILINE)
    assert [t[0] for t in tables] == ["2", "4"]
    assert out.index("iteration 2/4") < out.index("validation at iteration 2") < out.index("iteration 4/4") < out.index("validation at iteration 4")
    mious = []
    for _, table, best, best_at in tables:
        rows = dict(line.rsplit(None, 1) for line in table.splitlines()[1:])
        assert list(rows)[:19] == list(CLASS_NAMES) and list(rows)[19:] == ["mIoU", "mIoU16", "mIoU13"]
        mious.append(float(rows["mIoU"]))
        assert float(best) == max(mious)
        assert int(best_at) == (2, 4)[mious.index(max(mious))]

    # validate on the same config: a results table without a best, and batch lines
    last = tmp_path / "checkpoints" / "last.ckpt"
    main(["validate", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", str(last)])
    out = capsys.readouterr().out
    assert re.search(r"^validation batch 2/2 \(100\.0%\)", out, re.MULTILINE)
    assert re.search(r"^validation\nclass +IoU \(%\)\nroad ", out, re.MULTILINE)
    assert "best mIoU" not in out and "\r" not in out

    # a progress bar named in the config replaces ours
    config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"})
    main(["validate", "--config", write_yaml(tmp_path / "own_bar.yaml", config), "--ckpt_path", str(last)])
    assert "validation batch" not in capsys.readouterr().out


class Tiny(L.LightningModule):
    """Logs a main loss (not on the bar), an auxiliary one (not chosen) and the lr (on the bar)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log_dict({"train/loss_seg_main": loss, "train/loss_seg_aux": 2 * loss})
        self.log("train/lr", 0.5, prog_bar=True)
        return loss

    def predict_step(self, batch, batch_idx):
        return self.layer(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_trainer(bar: ConsoleProgressBar, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[bar], **kwargs)


def loader() -> DataLoader:
    return DataLoader(torch.randn(8, 2), batch_size=2)  # 4 batches an epoch


def test_terminal_bar_counts_iterations_across_epochs_with_the_chosen_losses(capsys):
    bar = ConsoleProgressBar(plain=False)
    tiny_trainer(bar, max_steps=6).fit(Tiny(), loader())
    train = bar.train_progress_bar
    assert (train.n, train.total) == (6, 6)  # iterations of the whole run, not batches of the last epoch
    postfix = dict(item.split("=") for item in train.postfix.split(", "))
    assert set(postfix) == {"loss_seg_main", "lr"} and float(postfix["lr"]) == 0.5
    assert "6/6" in capsys.readouterr().out


def test_plain_lines_for_predict_batches(capsys):
    tiny_trainer(ConsoleProgressBar(plain=True, print_every_n_steps=3)).predict(Tiny(), loader())
    out = capsys.readouterr().out
    assert re.findall(r"^predict batch (\d)/4 \(\S+%\) \S+ it/s", out, re.MULTILINE) == ["3", "4"]
    assert "\r" not in out


def test_print_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="print_every_n_steps"):
        ConsoleProgressBar(print_every_n_steps=0)


def test_intrada_test_prints_plain_lines_without_a_terminal(toy_root, tmp_path, capsys):
    """intrada test in a job's log (no terminal): plain progress lines, no carriage returns, and the
    AdaBN message on a line of its own."""
    from helpers import eval_config, write_yaml, trained_segmenter
    from intrada_pl.cli import main

    ckpt = tmp_path / "m.pth"
    torch.save(trained_segmenter().state_dict(), ckpt)
    config = eval_config(toy_root)
    config["trainer"].pop("enable_progress_bar")
    main(["test", "--config", write_yaml(tmp_path / "t.yaml", config), "--ckpt", str(ckpt), "--method", "adabn",
          "--model.adabn_cache", "null", "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert re.search(r"^test batch 4/4 ", captured.out, re.MULTILINE)
