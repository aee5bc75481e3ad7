"""How fast does TResNet-M learn the quickstart shapes from scratch? One setting per run.

A plain training loop with the recipe's own pieces (model, data module, parameter groups,
warmup + cosine, EMA of weights and buffers), so settings can be compared by validation accuracy
after a fixed number of steps without Lightning's per-epoch checkpoints and plots. Accuracy per
step does not depend on machine load; wall time does, so time the real recipe separately
(``time tresnet-ft fit --recipe quickstart``) on an idle machine.

    python benchmarks/quickstart_sweep.py --train-images 1200 --epochs 4 --lr 5e-4
    python benchmarks/quickstart_sweep.py --train-images 500 --epochs 10 --noise 0.5

Prints one line per epoch: mean training loss, validation top-1 of the EMA weights and of the raw
weights.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tresnet_ft import ImageDataModule, create_model
from tresnet_ft.data import quickstart
from tresnet_ft.data.transforms import images_to_float
from tresnet_ft.training.optim import build_optimizer, build_scheduler, param_groups


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=500, help="generated training images per epoch")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"])
    parser.add_argument("--beta2", type=float, default=0.999, help="Adam's second-moment decay")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--ema-decay", type=float, default=0.95)
    parser.add_argument("--train-crop", default="squish_random_crop")
    parser.add_argument("--residual-init", type=float, default=0.0,
                        help="starting scale of every residual branch's last norm (TResNet: 0)")
    parser.add_argument("--norm-lr-mult", type=float, default=1.0,
                        help="learning-rate multiplier for norm weights and biases (the no-decay groups)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=0, help="also validate every N steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the data order")
    parser.add_argument("--noise", type=float, default=1.0, help="scale of the background blotches and grain")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args()


def scale_background_noise(factor: float) -> None:
    """Make the generated backgrounds calmer (factor < 1) or busier, for this process only."""
    generate = quickstart._noisy_background

    def scaled(rng, size):
        calm = generate(rng, size).astype("float32")
        return (calm.mean(axis=(0, 1)) + factor * (calm - calm.mean(axis=(0, 1)))).clip(0, 255).astype("uint8")

    quickstart._noisy_background = scaled


def validation_top1(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for images, labels in loader:
            predicted = model(images_to_float(images).contiguous(memory_format=torch.channels_last)).argmax(1)
            correct += int((predicted == labels).sum())
            seen += len(labels)
    model.train()
    return correct / seen


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.noise != 1.0:
        scale_background_noise(args.noise)
    torch.manual_seed(args.seed)
    data = ImageDataModule(dataset="quickstart", dataset_options={"num_images": {"train": args.train_images}},
                           image_size=args.image_size, batch_size=args.batch_size, num_workers=0,
                           randaugment_ops=0, cutout=0.0, train_crop=args.train_crop)
    data.setup("fit")
    model = create_model("tresnet_m", 5, pretrained=None, norm="inplace_abn", residual_init=args.residual_init)
    groups = param_groups(model, args.lr, args.weight_decay, 1.0)
    for group in groups:
        if group["weight_decay"] == 0.0:
            group["lr"] = group["initial_lr"] = group["lr"] * args.norm_lr_mult
    optimizer = build_optimizer(args.optimizer, groups, betas=(0.9, args.beta2))
    steps_per_epoch = len(data.train_dataloader())
    scheduler = build_scheduler("cosine", optimizer, steps_per_epoch * args.epochs,
                                warmup_steps=int(args.warmup_epochs * steps_per_epoch))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
    start, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        losses = []
        for images, labels in data.train_dataloader():
            logits = model(images_to_float(images).contiguous(memory_format=torch.channels_last))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            losses.append(loss.item())
            step += 1
            if args.eval_every and step % args.eval_every == 0:
                print(f"  step {step}: recent loss {sum(losses[-args.eval_every:]) / len(losses[-args.eval_every:]):.3f}, "
                      f"val top-1 EMA {validation_top1(ema.module, data.val_dataloader()):.2f}", flush=True)
        print(f"epoch {epoch} step {step}: train loss {sum(losses) / len(losses):.3f}, "
              f"val top-1 EMA {validation_top1(ema.module, data.val_dataloader()):.2f}, "
              f"raw {validation_top1(model, data.val_dataloader()):.2f} ({time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
