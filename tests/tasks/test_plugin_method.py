"""A retrieval method added from outside rswb, through its public API alone, trains and is rebuilt.

The method lives in a user's script (run in its own process, so the registry of the other tests stays as it is):
a model builder registered with ``register_retrieval_method`` and a loss registered under the same name. Nothing in
``rswb/`` is edited; ``--method`` accepts the new name, an option of another method is refused for it, and the run
trains one epoch, is scored, and is rebuilt by ``load_run`` with the same test numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import json
    import sys

    import torch
    import torch.nn.functional as F
    from torch import nn

    from rswb.engine import EvalContext, load_run
    from rswb.engine.launch import train_task
    from rswb.losses.contrastive import symmetric_info_nce
    from rswb.losses.retrieval import RetrievalLoss
    from rswb.models.retrieval import RetrievalNet, build_encoders, register_retrieval_method, retrieval_methods
    from rswb.models.text import masked_mean
    from rswb.registry import register_loss


    class MeanPool(RetrievalNet):
        """The pooled image vector and the mean token state, each through one linear layer."""

        method = "meanpool"

        def __init__(self, channels, text_dim, embed_dim, backbone=None, text_encoder=None):
            super().__init__(embed_dim, backbone, text_encoder)
            self.img = nn.Linear(channels["pooled"], embed_dim)
            self.txt = nn.Linear(text_dim, embed_dim)

        def image_head(self, levels):
            return {"image_emb": F.normalize(self.img(levels["pooled"]), dim=1)}

        def text_head(self, states, mask, tags=None):
            return {"text_emb": F.normalize(self.txt(masked_mean(states, mask)), dim=1)}

        def pooled_projection(self):
            return self.img


    @register_retrieval_method
    def meanpool(channels=None, text_dim=384, embed_dim=512, **encoders):
        bb, txt, channels, text_dim = build_encoders(channels, text_dim, **encoders)
        return MeanPool(channels, text_dim, embed_dim, backbone=bb, text_encoder=txt)


    class MeanPoolLoss(RetrievalLoss):
        def forward(self, image_emb, text_emb, image_id, **batch):
            sim = image_emb @ text_emb.t()
            return {"nce_loss": symmetric_info_nce(image_emb, text_emb, 0.1, image_id), **self.diagnostics(sim)}


    @register_loss
    def meanpool():
        return MeanPoolLoss()


    runs_root = sys.argv[1]
    opts = {"method": "meanpool", "backbone": "small_cnn", "pretrained": False, "image_size": 64,
            "embed_dim": 32, "epochs": 1, "batch_size": 64, "progress": False}
    try:
        train_task("retrieval", {**opts, "fgis_steps": 3}, run_name="refused", runs_root=runs_root)
        refused = ""
    except ValueError as err:
        refused = str(err)
    result = train_task("retrieval", opts, run_name="meanpool", runs_root=runs_root)
    run = load_run(result.run_dir, splits=("test",))
    again = run.task.evaluate(run.test, EvalContext(torch.device("cpu")))
    print(json.dumps({"methods": list(retrieval_methods()), "refused": refused, "recorded": run.metrics["test"],
                      "again": again, "method": run.config["task_config"]["method"],
                      "epochs": len(run.history), "train": run.train is None}))
''')


def test_a_retrieval_method_added_through_the_public_api_trains_and_is_rebuilt(tmp_path):
    script = tmp_path / "my_method.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "RSWB_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["methods"][:4] == ["vsepp", "clip", "fisvl", "kamcl"] and out["methods"][-1] == "meanpool"
    assert "--fgis-steps" in out["refused"] and "meanpool" in out["refused"]
    assert not (tmp_path / "runs" / "refused").exists()  # refused before any folder or data
    assert out["method"] == "meanpool" and out["epochs"] == 1 and out["train"]  # only the test split rebuilt
    for key in ("mR", "i2t_R@1", "t2i_R@10"):
        assert out["again"][key] == out["recorded"][key]
    assert 0 < out["recorded"]["mR"] <= 100


def test_an_unregistered_method_is_refused_with_the_registered_ones(tmp_path):
    import pytest

    from rswb.engine.launch import train_task

    with pytest.raises(ValueError, match="--method must be one of vsepp, clip, fisvl, kamcl.*got 'nosuch'"):
        train_task("retrieval", {"method": "nosuch"}, run_name="x", runs_root=tmp_path)
    assert not Path(tmp_path, "x").exists()
