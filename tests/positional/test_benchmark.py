"""``kexue bench rope --quick``: every ratio is recorded with its target, against the real peers."""

from __future__ import annotations

import json
from pathlib import Path

from kexue.cli import main


def test_rope_bench_quick(tmp_path: Path) -> None:
    code = main(["bench", "rope", "--quick", "--repeats", "1", "--out", str(tmp_path)])
    assert code in (0, 1)  # 1 = a target missed: speed is judged in benchmarks, not in tests
    payload = json.loads((tmp_path / "bench.json").read_text())
    ratios = {r["id"]: r for r in payload["ratios"]}
    assert set(ratios) == {
        "rope.fwd_vs_hf",
        "rope.fwd_vs_lucidrains",
        "rope.axial_vs_lucidrains",
        "rope.fwd_bwd_vs_hf",
        "rope.fwd_vs_clone",
        "rope.out_vs_copy",
        "rope.hf_patch_rope_share",
        "rope.hf_patch_prefill",
        "rope.hf_patch_decode",
        "rope.scaled_tables_vs_1d",
        "rope.scaled_apply_vs_1d",
        "rope.qk_vs_copy",
        "rope.compiled_vs_kernel",
        "rope.hf_patch_rope_share_out_of_place",
    }
    assert ratios["rope.qk_vs_copy"]["target"] == 1.1 and ratios["rope.compiled_vs_kernel"]["target"] is None
    assert (
        ratios["rope.scaled_apply_vs_1d"]["target"] == 1.15
        and ratios["rope.scaled_apply_vs_1d"]["higher_is_better"] is False
    )
    types = {c["params"]["rope_type"] for c in payload["cases"] if c["case"].startswith("E: rotate")}
    assert types == {"default", "linear", "dynamic", "yarn", "llama3", "longrope"}
    assert ratios["rope.hf_patch_rope_share"]["target"] == 3.0 and ratios["rope.hf_patch_decode"]["target"] is None
    shares = [c["params"]["rope_share"] for c in payload["cases"] if c["case"].startswith("D: LLaMA forward")]
    assert len(shares) == 3 and all(0 < s < 1 for s in shares)
    assert ratios["rope.fwd_vs_hf"]["target"] == 3.0 and ratios["rope.out_vs_copy"]["higher_is_better"] is False
    assert all(r["value"] > 0 for r in ratios.values())
