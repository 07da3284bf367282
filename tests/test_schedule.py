"""The learning-rate schedules: InstCal's warm-up + poly (Detectron2 WarmupPolyLR), plain poly elsewhere."""

from __future__ import annotations

import math
import pickle

import lightning as L
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from intrada_pl.data.datamodules import SourceTargetDataModule
from intrada_pl.models import DeepLabV2
from intrada_pl.optim import Adam, Poly, PolyDecay, ReferenceSGD
from intrada_pl.stages.calibration import CalibrationModule
from intrada_pl.stages.segmentation import SegmentationModule

torch.set_num_threads(1)


def detectron2_warmup_poly(step: int, max_iters: int, warmup_iters: int, warmup_factor: float, power: float = 0.9) -> float:
    """WarmupPolyLR's factor as Detectron2 writes it (linear warm-up, constant ending 0), for comparison."""
    alpha = step / warmup_iters if warmup_iters else 1.0
    warm = 1.0 if step >= warmup_iters else warmup_factor * (1 - alpha) + alpha
    return warm * math.pow(1.0 - step / max_iters, power)


# InstCal's effective setting: MAX_ITER 90k, Detectron2 defaults WARMUP_ITERS 1000, WARMUP_FACTOR 1/1000, power 0.9.
REFERENCE_TABLE = [
    (0, 0.001),  # warmup_factor x poly(0) = 0.001
    (1, 0.0019989800),  # (0.001 x 0.999 + 0.001) x (1 - 1/90000)^0.9
    (500, 0.4979968034),  # 0.5005 x (1 - 500/90000)^0.9
    (999, 0.9890154184),  # 0.999001 x (1 - 999/90000)^0.9
    (1000, (1 - 1 / 90) ** 0.9),  # warm-up over: the poly term alone, counted from step 0 (0.98999)
    (45_000, 0.5**0.9),  # 0.5358867
    (90_000, 0.0),
    (95_000, 0.0),  # Detectron2 would fail (negative base); training never gets there, ours holds at 0
]


def test_poly_decay_values():
    poly = PolyDecay(250_000, 0.9)
    assert poly(0) == 1.0
    assert poly(120_000) == pytest.approx((1 - 120_000 / 250_000) ** 0.9)
    assert poly(120_000) == pytest.approx(0.555, abs=1e-3)  # ADVENT never decays to 0
    assert poly(300_000) == 0.0
    with pytest.raises(ValueError):
        PolyDecay(0)


@pytest.mark.parametrize(("step", "expected"), REFERENCE_TABLE)
def test_factor_matches_detectron2_warmup_poly(step, expected):
    decay = PolyDecay(90_000, 0.9, warmup_steps=1000, warmup_factor=0.001)
    assert decay(step) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    if step <= 90_000:
        assert decay(step) == pytest.approx(detectron2_warmup_poly(step, 90_000, 1000, 0.001), rel=1e-12, abs=1e-15)


def test_no_warmup_is_the_plain_poly_law():
    plain, zero = PolyDecay(250_000, 0.9), PolyDecay(250_000, 0.9, warmup_steps=0, warmup_factor=0.5)
    for step in (0, 1, 999, 120_000, 250_000, 300_000):
        assert zero(step) == plain(step) == max(0.0, 1 - step / 250_000) ** 0.9


def test_segmentation_stages_keep_plain_poly():
    """ADVENT / IntraDA stages (SegmentationModule.poly, also used by the inter stage) have no warm-up."""
    module = SegmentationModule(DeepLabV2(depth=18), ReferenceSGD(lr=0.01), Poly(10))
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    decay = scheduler.lr_lambdas[0]
    assert decay.warmup_steps == 0
    assert [decay(step) for step in range(11)] == [(1 - step / 10) ** 0.9 for step in range(11)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_steps": 10}, r"warmup_steps must be in \[0, total_steps=10\), got 10"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 2, "warmup_factor": 1.5}, "warmup_factor must be in"),
    ],
)
def test_bad_warmup_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolyDecay(10, **kwargs)


def test_decay_pickles_and_round_trips_through_scheduler_state():
    decay = PolyDecay(90_000, 0.9, warmup_steps=1000, warmup_factor=0.001)
    copy = pickle.loads(pickle.dumps(decay))
    assert [copy(s) for s in (0, 500, 1000)] == [decay(s) for s in (0, 500, 1000)]

    params = [torch.nn.Parameter(torch.zeros(1))]
    scheduler = LambdaLR(torch.optim.Adam(params, lr=1.0), PolyDecay(20, 0.9, warmup_steps=5, warmup_factor=0.1))
    for _ in range(3):
        scheduler.optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0] == {"total_steps": 20, "power": 0.9, "warmup_steps": 5, "warmup_factor": 0.1}
    restored = LambdaLR(torch.optim.Adam(params, lr=1.0), PolyDecay(20, 0.9, warmup_steps=5, warmup_factor=0.1))
    restored.load_state_dict(state)
    restored.optimizer.step()
    restored.step()
    assert restored.get_last_lr()[0] == pytest.approx(detectron2_warmup_poly(4, 20, 5, 0.1))


class _LrRecorder(L.Callback):
    """The learning rate each training step runs with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(module, toy_root, root, max_steps: int, ckpt_path=None) -> tuple[L.Trainer, _LrRecorder]:
    recorder = _LrRecorder()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), callbacks=[recorder],
    )
    data = SourceTargetDataModule(
        source_root=str(toy_root / "GTA5"), source_size=(64, 36), target_root=str(toy_root / "Cityscapes"),
        use_target=False, val_size=(64, 32), batch_size=2, num_workers=0,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, recorder


def test_calibration_runs_warmup_poly_by_step_and_resumes_it(deeplab_ckpt, toy_root, tmp_path):
    """Step k trains with lr x factor(k) (Detectron2 steps its scheduler after each iteration), and a
    checkpoint carries the schedule on: the resumed steps continue the same law."""
    args = dict(augmentations=["randaugment"], optimizer=Adam(lr=0.1), lr_scheduler=Poly(8, warmup_steps=4, warmup_factor=0.1))
    expected = [0.1 * detectron2_warmup_poly(k, 8, 4, 0.1) for k in range(9)]
    assert CalibrationModule(str(deeplab_ckpt)).hparams.lr_scheduler["init_args"]["warmup_steps"] == 1000  # the reference's default

    L.seed_everything(0)
    trainer, recorder = _fit(CalibrationModule(str(deeplab_ckpt), **args), toy_root, tmp_path, max_steps=6)
    assert recorder.lrs == pytest.approx(expected[:6], rel=1e-9)
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(expected[6], rel=1e-9)
    ckpt = tmp_path / "step6.ckpt"
    trainer.save_checkpoint(ckpt)

    _, resumed = _fit(CalibrationModule(str(deeplab_ckpt), **args), toy_root, tmp_path, max_steps=8, ckpt_path=str(ckpt))
    assert resumed.lrs == pytest.approx(expected[6:8], rel=1e-9)


def test_calibration_without_warmup_is_the_base_stage_poly(deeplab_ckpt):
    module = CalibrationModule(str(deeplab_ckpt), optimizer=Adam(lr=0.1), lr_scheduler=Poly(8))
    decay = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert [decay(k) for k in range(10)] == [PolyDecay(8, 0.9)(k) for k in range(10)]
