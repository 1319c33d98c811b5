"""Train the small class-conditioned DDPM and the judge that tests/test_serving.py serves and reads.

    PYTHONPATH=src python scripts/make_serving_fixture.py [--epochs 12] [--out tests/fixtures/serving]

The served-model test must show real, readable digits, which a tiny smoke model does not draw, and training a
readable one inside the test costs minutes of CPU. So it is trained once, here, with the project's own code on
the bundled digits (the quick profile's class DDPM settings, D=16, fewer epochs) and stored in fp16 (it loads
back as fp32): class_ddpm.pt (train.save_checkpoint format) and judge.pt (judge.save_judge format), with
fixture.json saying how they were made and how well the judge reads the model's digits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.config import JudgeConfig, PartBConfig
from difflab.data import load_mnist, to_float
from difflab.judge import judge_accuracy, judge_predict, save_judge, train_judge
from difflab.sampling import digit_labels, draw
from difflab.stages import STAGES
from difflab.train import TrainInputs, fit, plan_training, save_checkpoint


def _halved(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    copy_ = copy.deepcopy(module).cpu()
    for p in copy_.parameters():
        p.data = p.data.half()
    return copy_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--out", default="tests/fixtures/serving")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    cfg = PartBConfig(profile="quick", class_ddpm={"hidden": args.hidden, "epochs": args.epochs,
                                                   "snapshot_epochs": [args.epochs]})
    data = load_mnist(cfg.data)
    started = time.perf_counter()
    judge = train_judge(data.train_images, data.train_labels, JudgeConfig())
    judge_acc = judge_accuracy(judge, data.test_images, data.test_labels)
    save_judge(_halved(judge), out / "judge.pt")
    print(f"judge: held-out accuracy {judge_acc:.3f} in {time.perf_counter() - started:.0f} s", flush=True)

    st, sc = STAGES["class"], cfg.class_ddpm
    schedule = st.schedule(sc)
    x, y = to_float(data.train_images), data.train_labels
    plan = plan_training(sc.epochs, sc.batch_size, sc.snapshot_epochs, len(y), sc.match_course_steps,
                         st.lr_final_factor(sc))
    started = time.perf_counter()
    result = fit(st.train_settings(sc.model_copy(update={"ema_decay": 0.0}), plan, cfg.seed, "cpu"),
                 TrainInputs(x, y, st.loss(sc, schedule),
                             on_epoch_end=lambda m, r: print(f"epoch {r.epoch}: loss {r.mean_loss:.4f}", flush=True)))
    seconds = time.perf_counter() - started
    save_checkpoint(out / "class_ddpm.pt", _halved(result.model), st.model_kind, st.checkpoint_extra(sc),
                    epoch=plan.epochs)
    labels = digit_labels(4)
    pred = judge_predict(judge, draw(result.model, schedule, len(labels), 0, labels, sc.guidance,
                                     fast=sc.fast).images).argmax(1)
    agreement = {str(d): int((pred[labels == d] == d).sum()) for d in range(10)}
    facts = {"made_by": "scripts/make_serving_fixture.py", "data": data.source, "n_train": len(y),
             "class_ddpm": {"hidden": sc.hidden, "epochs": plan.epochs, "steps": plan.epochs * plan.steps_per_epoch,
                            "batch_size": sc.batch_size, "lr": sc.lr, "num_timesteps": sc.num_timesteps,
                            "final_loss": sum(result.losses[-plan.steps_per_epoch:]) / plan.steps_per_epoch,
                            "train_seconds": round(seconds)},
             "judge": {"heldout_accuracy": judge_acc},
             "judged_correct_of_4_per_digit_seed_0": agreement}
    (out / "fixture.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
