"""Decoupled GAN speed on the anny-face template (4200 vertices, 64 × 64 geometry images, the paper's sizes).

Reports, for ``morphzoo.methods.DecoupledGAN`` with the paper's defaults (z = 65 + 15 + 5, 512 hidden units):
- training throughput: critic steps/s and generator steps/s at ``--batch`` meshes (each step as ``training_step``
  runs it: losses, backward, Adam), and one training iteration (3 critic steps + 1 generator step) per second;
- the geometry mapping's share: its forward (+ backward) at the same batch, against the critic step;
- generation latency at batch 1 and 1000 (eval mode, inference mode, median over ``--repeats`` calls);
- fitting time per target: ``fit_landmarks`` on the 85 anny-face landmarks (500 Adam steps, 64 targets at once) and
  ``encode`` (every vertex, ``fit_steps`` = 300).

    python benchmarks/gan.py [--batch 64] [--repeats 5] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from morphzoo.data.anny import load_anny_dataset
from morphzoo.fitting import fit_landmarks
from morphzoo.methods import DecoupledGAN


def median_seconds(call, repeats: int, device: torch.device) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    collection = load_anny_dataset("anny-face", "tiny")
    meshes = torch.from_numpy(collection.vertices[: args.batch]).to(device)
    gan = DecoupledGAN(template=collection.template, mean=meshes.mean(0), std=meshes.std(0).clamp_min(1e-5),
                       identities=8, expressions=12).to(device).train()
    critic_optimiser, generator_optimiser = gan.configure_optimizers()
    real = gan.normalise(meshes)
    labels = {"identity": torch.as_tensor(collection.labels["identity"][: args.batch], device=device),
              "expression": torch.as_tensor(collection.labels["expression"][: args.batch], device=device)}

    def critic_step() -> None:
        loss = gan.critic_loss(real, labels)["loss"]
        critic_optimiser.zero_grad()
        loss.backward()
        critic_optimiser.step()

    def generator_step() -> None:
        gan.discriminator.requires_grad_(False)
        loss = gan.generator_loss(args.batch, "identity")["loss"]
        generator_optimiser.zero_grad()
        loss.backward()
        generator_optimiser.step()
        gan.discriminator.requires_grad_(True)

    mapped = real.clone().requires_grad_(True)
    critic = median_seconds(critic_step, args.repeats, device)
    generator = median_seconds(generator_step, args.repeats, device)
    mapping = median_seconds(lambda: gan.mapping(real), args.repeats, device)
    mapping_backward = median_seconds(lambda: gan.mapping(mapped).sum().backward(), args.repeats, device)
    print(f"DecoupledGAN on anny-face ({gan.num_vertices} vertices), batch {args.batch}, {torch.get_num_threads()} "
          f"threads, {device}")
    print(f"  critic step     {critic * 1e3:8.1f} ms  ({1 / critic:6.2f} steps/s)")
    print(f"  generator step  {generator * 1e3:8.1f} ms  ({1 / generator:6.2f} steps/s)")
    print(f"  iteration (3 critic + 1 generator) {1 / (3 * critic + generator):6.2f} /s")
    print(f"  geometry mapping forward {mapping * 1e3:6.2f} ms, forward + backward {mapping_backward * 1e3:6.2f} ms "
          f"(a critic step maps 2 batches and differentiates 1: "
          f"{100 * (2 * mapping + mapping_backward) / critic:4.1f} % of it)")

    gan.eval()
    for count in (1, 1000):
        codes = torch.randn(count, *gan.latent_shape, device=device)
        with torch.inference_mode():
            seconds = median_seconds(lambda codes=codes: gan.decode(codes), args.repeats, device)
        print(f"  generation, batch {count:4d}: {seconds * 1e3:8.2f} ms ({seconds / count * 1e6:7.1f} µs per mesh)")

    landmarks = collection.template.landmarks
    targets = meshes[:, landmarks]
    start = time.perf_counter()
    fit_landmarks(gan, landmarks, targets, steps=500)
    landmark_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gan.encode(meshes)
    encode_seconds = time.perf_counter() - start
    print(f"  fit_landmarks, 85 landmarks, 500 steps: {landmark_seconds / len(meshes) * 1e3:6.1f} ms per target "
          f"({len(meshes)} at once)")
    print(f"  encode (all vertices, {gan.hparams.fit_steps} steps): {encode_seconds / len(meshes) * 1e3:6.1f} ms per "
          f"mesh ({len(meshes)} at once)")


if __name__ == "__main__":
    main()
