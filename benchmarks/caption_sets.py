"""Text statistics of the caption sets and of the knowledge the retrieval methods build from them.

For each caption set (UCM-Captions, RSICD, RSITMD in ``../shared/data``): images and captions per split, words per
caption, vocabulary, duplicate-caption rate and frequent words (:meth:`rswb.data.CaptionSet.stats`); KAMCL's tag
vocabulary (top 512 content words of the training captions) and per-image tag targets (words used by more than one
of an image's captions); FISVL's caption value weights (IDF mass of the content words, mean 1, clipped to
[0.5, 2]). No images are needed. Writes ``benchmarks/results/caption_sets.json`` and ``caption_sets.md``.

Usage: ``python -m benchmarks.caption_sets [--root ../shared/data]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from rswb.data.captions import read_captions
from rswb.data.tags import build_tag_vocabulary, caption_values, tag_targets

RESULTS = Path(__file__).parent / "results"
SETS = {"UCM-Captions": "ucm_captions", "RSICD": "rsicd_captions", "RSITMD": "rsitmd_captions"}


def describe(root: Path) -> dict:
    """Statistics of one caption folder (precomp train/test)."""
    out: dict = {}
    for split in ("train", "test"):
        s = read_captions(root, split).stats(top_words=8)
        out[split] = {k: s[k] for k in ("images", "captions", "captions_per_image", "words_per_caption",
                                        "vocabulary", "duplicate_rate", "top_words")}
    train = read_captions(root, "train")
    vocab = build_tag_vocabulary(train.captions, k=512)
    per_image = [train.captions_of(i) for i in range(train.num_images)]
    targets = tag_targets(per_image, vocab)
    tagged = (targets > 0).sum(1)
    values = caption_values(train.captions)
    out["knowledge"] = {
        "tag_vocabulary": len(vocab), "first_tags": vocab[:10],
        "images_with_tags": float((tagged > 0).mean()), "tags_per_image_mean": float(tagged.mean()),
        "caption_value_p5_p50_p95": [float(v) for v in np.percentile(values, [5, 50, 95])],
        "caption_value_at_clip": float(np.mean((values <= 0.5) | (values >= 2.0))),
    }
    return out


def table(results: dict) -> str:
    """Markdown tables: one row per set and split, then the knowledge rows."""
    lines = ["| set | split | images | captions | captions / image (min-max) | words / caption (mean, max) | "
             "vocabulary | duplicate captions |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for split in ("train", "test"):
            s = r[split]
            cpi, wpc = s["captions_per_image"], s["words_per_caption"]
            lines.append(f"| {name} | {split} | {s['images']:,} | {s['captions']:,} | {cpi['min']}-{cpi['max']} | "
                         f"{wpc['mean']:.1f}, {wpc['max']} | {s['vocabulary']:,} | {100 * s['duplicate_rate']:.1f} % |")
    lines += ["", "| set | tag vocabulary | training images with >= 1 tag | tags / image | caption value p5 / p50 / "
              "p95 | captions at a clip bound | most frequent tags |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        k = r["knowledge"]
        p = " / ".join(f"{v:.2f}" for v in k["caption_value_p5_p50_p95"])
        lines.append(f"| {name} | {k['tag_vocabulary']} | {100 * k['images_with_tags']:.1f} % | "
                     f"{k['tags_per_image_mean']:.1f} | {p} | {100 * k['caption_value_at_clip']:.1f} % | "
                     f"{', '.join(k['first_tags'][:6])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="folder holding the caption sets")
    a = p.parse_args(argv)
    results = {name: describe(Path(a.root) / folder) for name, folder in SETS.items()
               if (Path(a.root) / folder).is_dir()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "caption_sets.json").write_text(json.dumps(results, indent=1))
    cmd = "python -m benchmarks.caption_sets " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"Command: `{cmd.strip()}`\n\n" + table(results) + "\n"
    (RESULTS / "caption_sets.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
