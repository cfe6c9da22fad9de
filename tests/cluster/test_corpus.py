"""Corpus building on real structures with a real Ray and real WebDataset shards."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from cluster.corpus import KILL_ONCE_ENV, build_corpus, dedup_key
from cluster.manifest import COUNT_FIELDS, FORMAT_NAME, read_manifest, sha256_file
from cluster.ray_env import setdefault_loopback

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "corpus" / "structures_sample.jsonl.gz"

DISORDERED_CIF = """\
data_FeNi
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   3.52
_cell_length_b   3.52
_cell_length_c   3.52
_cell_angle_alpha   90.0
_cell_angle_beta   90.0
_cell_angle_gamma   90.0
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Fe  Fe0  1  0.0  0.0  0.0  0.5
  Ni  Ni0  1  0.0  0.0  0.0  0.5
  Fe  Fe1  1  0.5  0.5  0.0  1
"""

# A CIF cut off in the middle of its atom loop, as a failed download leaves it.
TRUNCATED_CIF = """\
data_broken
_cell_length_a 3.0
_cell_length_b 3.0
_cell_length_c
_cell_angle_alpha 90
loop_
_atom_site_label
_atom_site_fract_x
Na1 0.0 0.0
"""


# ----------------------------------------------------------------------------- helpers


def jsonl_prefix(source: Path, target: Path, n: int, start: int = 0) -> Path:
    """Lines ``start`` … ``start + n`` of a (gzipped) JSON Lines file, gzipped."""
    with gzip.open(source, "rt") as src, gzip.open(target, "wt") as dst:
        for i, line in enumerate(src):
            if i >= start + n:
                break
            if i >= start:
                dst.write(line)
    return target


def csv_rows(source: Path, n: int) -> tuple[list[str], list[list[str]]]:
    csv.field_size_limit(1 << 30)
    with gzip.open(source, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for _, row in zip(range(n), reader, strict=False)]
    return header, rows


def write_csv(target: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return target


def shard_samples(directory: Path) -> list[dict]:
    """Every sample of a corpus, in shard order, read with the tarfile module."""
    manifest = read_manifest(directory)
    samples = []
    for shard in manifest["shards"]:
        with tarfile.open(directory / shard["name"]) as tar:
            members = tar.getmembers()
            assert len(members) == shard["num_samples"]
            for member in members:
                assert member.mtime == 0 and member.uid == 0 and member.name.endswith(".json")
                sample = json.loads(tar.extractfile(member).read())
                assert member.name == f"{sample['key']}.json"
                samples.append(sample)
    return samples


def quarantine_lines(directory: Path) -> list[dict]:
    text = (directory / "quarantine.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def shard_fingerprint(manifest: dict) -> list[tuple[str, str, int]]:
    return [(s["name"], s["sha256"], s["num_samples"]) for s in manifest["shards"]]


def assert_balanced(manifest: dict) -> None:
    for source, counts in manifest["counts"].items():
        assert set(counts) == set(COUNT_FIELDS), source
        assert counts["read"] == (
            counts["written"] + counts["quarantined"] + counts["duplicates"] + counts["excluded"]
        ), source
    totals = manifest["totals"]
    assert (
        totals["written"]
        == manifest["num_samples"]
        == sum(s["num_samples"] for s in manifest["shards"])
    )


def loopback_env() -> dict[str, str]:
    env = setdefault_loopback(dict(os.environ))
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="module")
def small_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """360 structures from the shipped sample (every source is in the first few hundred)."""
    target = tmp_path_factory.mktemp("small") / "small.jsonl.gz"
    return jsonl_prefix(SAMPLE, target, 360)


@pytest.fixture(scope="module")
def small_two_workers(
    tmp_path_factory: pytest.TempPathFactory, ray_session, small_jsonl: Path
) -> Path:
    out = tmp_path_factory.mktemp("small_w2")
    build_corpus([small_jsonl], out, shard_size=100, workers=2, unit_size=40, progress=False)
    return out


# ----------------------------------------------------------------------------- the sample


def test_sample_corpus_shards_hold_the_documented_samples(sample_corpus: Path) -> None:
    from tokenizer import ScopeTokenizer

    manifest = read_manifest(sample_corpus)
    assert manifest["format"] == FORMAT_NAME and manifest["version"] == 1
    assert_balanced(manifest)
    assert manifest["totals"]["read"] == 2986
    assert [s["name"] for s in manifest["shards"]] == [
        f"corpus-{i:06d}.tar" for i in range(len(manifest["shards"]))
    ]
    assert all(s["num_samples"] == 500 for s in manifest["shards"][:-1])
    assert 0 < manifest["shards"][-1]["num_samples"] <= 500
    for shard in manifest["shards"]:
        assert sha256_file(sample_corpus / shard["name"]) == shard["sha256"]
    tokenizer = ScopeTokenizer()
    assert manifest["tokenizer"]["vocab_hash"] == tokenizer.vocab_hash
    assert manifest["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    assert manifest["variants"] == ["cloud", "canonical"]
    assert manifest["dedup"] == "scope" and manifest["symprec"] == 0.01
    assert manifest["sources"][0]["path"] == str(SAMPLE)
    assert manifest["sources"][0]["size"] == SAMPLE.stat().st_size

    samples = shard_samples(sample_corpus)
    assert len({s["key"] for s in samples}) == len(samples) == manifest["num_samples"]
    expected_fields = {
        "key", "source", "source_id", "formula", "space_group", "num_sites", "properties",
        "scope", "input_ids",
    }  # fmt: skip
    for sample in samples[:50]:
        assert set(sample) == expected_fields
        assert set(sample["scope"]) == set(sample["input_ids"]) == {"cloud", "canonical"}
        for variant, text in sample["scope"].items():
            assert sample["input_ids"][variant] == tokenizer.encode(text)
        assert 1 <= sample["space_group"] <= 230 and sample["num_sites"] >= 1
    # No two written samples share canonical SCOPE + reduced formula (dedup="scope").
    keys = [dedup_key(s["scope"]["canonical"], s["formula"]) for s in samples]
    assert len(set(keys)) == len(keys)
    space_groups = manifest["histograms"]["space_group"]
    assert sum(space_groups.values()) == manifest["num_samples"]
    for variant in ("cloud", "canonical"):
        assert sum(manifest["histograms"]["token_length"][variant].values()) == len(samples)


def test_shards_stream_through_webdataset(sample_corpus: Path) -> None:
    import webdataset as wds

    manifest = read_manifest(sample_corpus)
    urls = [str(sample_corpus / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == manifest["num_samples"]
    assert all(s["__key__"] == s["json"]["key"] for s in samples)


def test_rerunning_a_finished_build_keeps_its_shards(sample_corpus: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in sample_corpus.glob("corpus-*.tar")}
    manifest = build_corpus(
        [SAMPLE],
        sample_corpus,
        shard_size=500,
        workers=2,
        ray_address="auto",
        variants=("cloud", "canonical"),
        progress=False,
    )
    assert manifest == read_manifest(sample_corpus)
    assert before == {p.name: p.stat().st_mtime_ns for p in sample_corpus.glob("corpus-*.tar")}
    with pytest.raises(ValueError, match=r"other inputs or settings.*shard_size"):
        build_corpus([SAMPLE], sample_corpus, shard_size=400, variants=("cloud", "canonical"))


def test_cli_stats_prints_counts_and_histograms(sample_corpus: Path, capsys) -> None:
    from train.cli import main

    assert main(["corpus", "stats", str(sample_corpus)]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(sample_corpus)
    assert f"corpus: {manifest['num_samples']} samples in {len(manifest['shards'])} shards" in out
    assert "source" in out and "quarantined" in out and "duplicates" in out
    total_line = next(line for line in out.splitlines() if line.startswith("total"))
    assert total_line.split()[1:] == [str(manifest["totals"][f]) for f in COUNT_FIELDS]
    for source in manifest["counts"]:
        assert any(line.startswith(source + " ") for line in out.splitlines())
    assert "space groups (" in out and "token lengths, cloud" in out
    assert "token lengths, canonical" in out
    assert main(["corpus", "stats", str(sample_corpus / "nowhere")]) == 2


def test_ray_listens_on_loopback_only(ray_session) -> None:
    import psutil

    addresses = set()
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    assert addresses, "found no listening Ray process"
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses


# ----------------------------------------------------------------------------- determinism


def test_one_and_two_workers_write_identical_shards(
    ray_session, tmp_path: Path, small_jsonl: Path, small_two_workers: Path
) -> None:
    one = build_corpus(
        [small_jsonl], tmp_path, shard_size=100, workers=1, unit_size=40, progress=False
    )
    two = read_manifest(small_two_workers)
    assert len(one["shards"]) == 4
    assert shard_fingerprint(one) == shard_fingerprint(two)
    assert one == two
    for shard in one["shards"]:
        assert (tmp_path / shard["name"]).read_bytes() == (
            small_two_workers / shard["name"]
        ).read_bytes()


def test_worker_killed_mid_unit_is_retried(
    ray_session, tmp_path: Path, small_jsonl: Path, small_two_workers: Path, monkeypatch
) -> None:
    sentinel = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_ONCE_ENV, str(sentinel))
    out = tmp_path / "corpus"
    manifest = build_corpus(
        [small_jsonl], out, shard_size=100, workers=2, unit_size=40, progress=False
    )
    assert sentinel.exists(), "the fault hook did not fire"
    assert manifest == read_manifest(small_two_workers)
    assert manifest["totals"]["read"] == 360


def repeated_jsonl(target: Path, n: int) -> Path:
    """The first ``n`` sample records, then the same cells again under another source, as
    property datasets that share their structures come."""
    with gzip.open(SAMPLE, "rt") as src:
        lines = [json.loads(line) for _, line in zip(range(n), src, strict=False)]
    with gzip.open(target, "wt") as dst:
        for record in lines:
            dst.write(json.dumps(record) + "\n")
        for record in lines:
            dst.write(json.dumps({**record, "source": "repeat", "id": f"r-{record['id']}"}) + "\n")
    return target


def test_symmetry_memo_serves_repeated_cells_without_changing_output(
    ray_session, tmp_path: Path
) -> None:
    import ray

    from cluster.corpus import EncodeOptions, SymmetryMemo, encode_unit
    from cluster.readers import discover, plan_units

    inputs = repeated_jsonl(tmp_path / "repeated.jsonl.gz", 60)
    first, second = plan_units(discover([inputs]), unit_size=60)
    options = EncodeOptions(("cloud", "canonical"), True, False, True)
    memo = ray.remote(num_cpus=0)(SymmetryMemo).remote(1000)
    try:
        first_results = encode_unit(first, options, memo=memo)
        readable = sum(1 for r in first_results if hasattr(r, "member"))
        stored = ray.get(memo.stats.remote())
        assert stored == {"entries": readable, "lookups": readable, "hits": 0}
        with_memo = encode_unit(second, options, memo=memo)
        assert ray.get(memo.stats.remote())["hits"] == readable
    finally:
        ray.kill(memo)
    assert with_memo == encode_unit(second, options)

    options = {"shard_size": 50, "workers": 2, "unit_size": 30, "progress": False}
    memo_on = build_corpus([inputs], tmp_path / "on", dedup="none", **options)
    memo_off = build_corpus([inputs], tmp_path / "off", dedup="none", memo_entries=0, **options)
    assert memo_on == memo_off
    assert memo_on["counts"]["repeat"]["written"] == readable
    assert memo_on["totals"]["written"] == 2 * readable
    for shard in memo_on["shards"]:
        assert (tmp_path / "on" / shard["name"]).read_bytes() == (
            tmp_path / "off" / shard["name"]
        ).read_bytes()


# ----------------------------------------------------------------------------- messy inputs


def test_messy_real_inputs_are_quarantined_and_deduplicated(
    ray_session, tmp_path: Path, shared_data: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    corpus_slice = jsonl_prefix(
        shared_data / "corpus" / "structures.jsonl.gz", inputs / "corpus_slice.jsonl.gz", 150
    )
    header, rows = csv_rows(shared_data / "mp_20_biternary" / "val.csv.gz", 40)
    mp20 = write_csv(inputs / "mp20_slice.csv", header, rows)
    id_column = header.index("material_id")
    repeated = [
        [*row[:id_column], f"copy-{row[id_column]}", *row[id_column + 1 :]] for row in rows[:10]
    ]
    copies = write_csv(inputs / "mp20_copies.csv", header, repeated)
    (inputs / "truncated.cif").write_text(TRUNCATED_CIF)
    (inputs / "disordered.cif").write_text(DISORDERED_CIF)
    (inputs / "empty.cif").write_bytes(b"")
    sources = [corpus_slice, mp20, copies, *sorted(inputs.glob("*.cif"))]

    out = tmp_path / "corpus"
    manifest = build_corpus(sources, out, shard_size=64, workers=2, unit_size=25, progress=False)

    assert_balanced(manifest)
    counts = manifest["counts"]
    assert sum(c["read"] for c in counts.values()) == 150 + 40 + 10 + 3
    assert counts["mp20_slice"]["read"] == 40
    assert counts["mp20_copies"] == {
        "read": 10,
        "written": 0,
        "quarantined": 0,
        "duplicates": 10,
        "excluded": 0,
    }
    for name in ("truncated", "disordered", "empty"):
        assert counts[name]["quarantined"] == counts[name]["read"] == 1
    lines = quarantine_lines(out)
    assert len(lines) == manifest["totals"]["quarantined"] == manifest["quarantine"]["lines"]
    assert all(list(line) == ["source", "position", "source_id", "reason"] for line in lines)
    reasons = {line["source"]: line["reason"] for line in lines}
    assert "partial occupancy" in reasons["disordered"]
    assert "empty file" in reasons["empty"]
    assert reasons["truncated"]
    assert {line["position"] for line in lines} >= {
        f"{inputs / 'disordered.cif'}:0",
        str(inputs / "empty.cif"),
    }
    samples = shard_samples(out)
    assert len(samples) == manifest["num_samples"]
    mp20_samples = [s for s in samples if s["source"] == "mp20_slice"]
    assert mp20_samples and all("band_gap" in s["properties"] for s in mp20_samples)
    assert not any(s["source"] == "mp20_copies" for s in samples)


def test_a_failed_build_says_why_and_a_retry_or_force_starts_it_afresh(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import main

    out = tmp_path / "corpus"
    missing = [str(tmp_path / f"typo{i}.jsonl") for i in range(7)]
    assert main(["corpus", "build", *missing, "--out", str(out), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "0 written, 7 quarantined" in err
    assert f"{missing[0]}: no such file or directory" in err
    assert f"{missing[4]}: no such file or directory" in err
    assert missing[5] not in err and f"… and 2 more in {out / 'quarantine.jsonl'}" in err

    # The retry with the right input builds: the failed build wrote nothing worth keeping.
    right = jsonl_prefix(SAMPLE, tmp_path / "right.jsonl.gz", 30)
    build = ["corpus", "build", str(right), "--out", str(out), "--workers", "2"]
    assert main(build) == 0
    first = read_manifest(out)
    assert first["totals"]["read"] == first["totals"]["written"] == 30
    assert not quarantine_lines(out)

    # A corpus with samples is kept, and the refusal names the way out.
    capsys.readouterr()
    assert main([*build, "--shard-size", "10"]) == 2
    assert "--force" in capsys.readouterr().err
    assert read_manifest(out) == first
    (out / "notes.txt").write_text("mine")
    assert main([*build, "--shard-size", "10", "--force"]) == 0
    forced = read_manifest(out)
    assert [s["num_samples"] for s in forced["shards"]] == [10, 10, 10]
    assert sorted(p.name for p in out.glob("corpus-*")) == [s["name"] for s in forced["shards"]]
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only a build's files


def test_exclude_keeps_test_set_structures_out(
    ray_session, tmp_path: Path, shared_data: Path
) -> None:
    header, rows = csv_rows(shared_data / "mp_20_biternary" / "test.csv.gz", 60)
    corpus_csv = write_csv(tmp_path / "pretrain.csv", header, rows)
    # The test set arrives in another format: one CIF file holding 15 of the structures.
    cif_column, id_column = header.index("cif"), header.index("material_id")
    test_set = tmp_path / "finetune_test.cif"
    test_set.write_text("\n".join(row[cif_column] for row in rows[:15]))
    held_out = {row[id_column] for row in rows[:15]}
    options = {"shard_size": 100, "workers": 2, "unit_size": 20, "progress": False}
    variants = ("cloud", "canonical")

    baseline = build_corpus([corpus_csv], tmp_path / "all", variants=variants, **options)
    excluded = build_corpus(
        [corpus_csv], tmp_path / "excl", variants=variants, exclude=[test_set], **options
    )
    assert_balanced(excluded)
    assert excluded["exclude"]["structures"] == 15 and excluded["exclude"]["unreadable"] == 0
    assert excluded["settings"]["exclude"][0]["path"] == str(test_set)
    base_samples = shard_samples(tmp_path / "all")
    held_out_keys = {
        dedup_key(s["scope"]["canonical"], s["formula"])
        for s in base_samples
        if s["source_id"] in held_out
    }
    assert len(held_out_keys) >= 10  # most of the 15 were in the corpus before
    kept = shard_samples(tmp_path / "excl")
    assert not {s["source_id"] for s in kept} & held_out
    assert not {dedup_key(s["scope"]["canonical"], s["formula"]) for s in kept} & held_out_keys
    assert excluded["totals"]["excluded"] >= len(held_out_keys)
    assert excluded["totals"]["written"] == baseline["totals"]["written"] - len(held_out_keys)


def test_structure_dedup_keeps_distinct_polymorphs(ray_session, tmp_path: Path) -> None:
    # carbon_24: many carbon polymorphs share a canonical SCOPE string but not a structure.
    carbon = tmp_path / "carbon.jsonl.gz"
    with gzip.open(SAMPLE, "rt") as src, gzip.open(carbon, "wt") as dst:
        lines = [line for line in src if '"carbon_24' in line][:60]
        dst.writelines(lines + lines[:5])  # the first five again: true duplicates
    by_scope = build_corpus(
        [carbon], tmp_path / "scope", shard_size=100, workers=2, unit_size=20, progress=False
    )
    by_structure = build_corpus(
        [carbon],
        tmp_path / "structure",
        shard_size=100,
        workers=2,
        unit_size=20,
        dedup="structure",
        progress=False,
    )
    none = build_corpus(
        [carbon], tmp_path / "none", shard_size=100, workers=2, unit_size=20,
        dedup="none", progress=False,
    )  # fmt: skip
    for manifest in (by_scope, by_structure, none):
        assert_balanced(manifest)
    assert none["totals"]["duplicates"] == 0 and none["totals"]["written"] == 65
    assert 5 <= by_structure["totals"]["duplicates"] < by_scope["totals"]["duplicates"]
    # Repeated source ids still get unique sample keys.
    keys = [s["key"] for s in shard_samples(tmp_path / "none")]
    assert len(set(keys)) == len(keys) == 65


# ----------------------------------------------------------------------------- crashes


def _running_build(out: Path, log: io.TextIOBase) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "train.cli", "corpus", "build", str(SAMPLE), "--out", str(out),
        "--shard-size", "500", "--workers", "2", "--variants", "cloud,canonical", "--no-progress",
    ]  # fmt: skip
    # Its own session, so that the Ray processes it starts can be ended with it.
    return subprocess.Popen(
        command, cwd=REPO, env=loopback_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _kill_session(process: subprocess.Popen) -> None:
    """End what is left of the session we started (Ray agents outlive a killed driver)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_build(
    sample_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "corpus"
    log_path = tmp_path / "build.log"
    with open(log_path, "w") as log:
        process = _running_build(out, log)
        try:
            deadline = time.monotonic() + 300
            while not (out / "corpus-000000.tar").exists():
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no shard after 300 s"
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)  # the driver, mid-build
            process.wait(timeout=30)
        finally:
            time.sleep(1)
            _kill_session(process)  # the Ray processes it had started
    assert not (out / "manifest.json").exists(), "the build finished before it was killed"
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert finished

    with open(log_path, "a") as log:
        process = _running_build(out, log)
        try:
            assert process.wait(timeout=600) == 0, log_path.read_text()
        finally:
            _kill_session(process)
    resumed = read_manifest(out)
    assert resumed == read_manifest(sample_corpus)
    for shard in resumed["shards"]:
        assert sha256_file(out / shard["name"]) == shard["sha256"]
    for name, identity in finished.items():
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, f"{name} was rewritten"
    assert not (out / ".build").exists()
    assert not list(out.glob("*.partial"))


TWO_NODE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **loopback})
    ray_cluster.add_node(num_cpus=1, **loopback)
    ray_cluster.wait_for_nodes()
    try:
        from cluster.corpus import build_corpus

        manifest = build_corpus(
            [sys.argv[1]], sys.argv[2], shard_size=100, workers=2, unit_size=40,
            ray_address=ray_cluster.address, progress=False,
        )
        ray.init(address=ray_cluster.address, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        print(json.dumps({"nodes": len(nodes), "cpus": ray.cluster_resources()["CPU"]}))
        ray.shutdown()
    finally:
        ray_cluster.shutdown()
    """
)


@pytest.mark.slow
def test_two_node_cluster_builds_the_same_corpus(
    tmp_path: Path, small_jsonl: Path, small_two_workers: Path
) -> None:
    out = tmp_path / "corpus"
    result = subprocess.run(
        [sys.executable, "-c", TWO_NODE_SCRIPT, str(small_jsonl), str(out)],
        cwd=REPO,
        env=loopback_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"nodes": 2, "cpus": 2.0}
    assert read_manifest(out) == read_manifest(small_two_workers)


# ----------------------------------------------------------------------------- engines


def test_moyo_engine_builds_the_same_canonical_corpus(
    ray_session, tmp_path: Path, small_jsonl: Path
) -> None:
    pytest.importorskip("moyopy")
    options = {"shard_size": 100, "workers": 2, "unit_size": 40, "progress": False}
    spglib_manifest = build_corpus(
        [small_jsonl], tmp_path / "spglib", variants=("canonical",), **options
    )
    moyo_manifest = build_corpus(
        [small_jsonl], tmp_path / "moyo", variants=("canonical",), engine="moyo", **options
    )
    assert moyo_manifest["totals"] == spglib_manifest["totals"]
    # moyo searches without an angle tolerance, so a structure at the edge of spglib's 5° may
    # land in another group (one of these 360: Cmcm for spglib's P6_3/mmc).
    moyo_groups = moyo_manifest["histograms"]["space_group"]
    spglib_groups = spglib_manifest["histograms"]["space_group"]
    moved = sum(
        abs(moyo_groups.get(g, 0) - spglib_groups.get(g, 0)) for g in {*moyo_groups, *spglib_groups}
    )
    assert moved / 2 <= 0.01 * moyo_manifest["totals"]["written"]


def test_moyo_engine_is_refused_for_the_released_variant(tmp_path: Path, small_jsonl: Path) -> None:
    with pytest.raises(ValueError, match="need spglib; use --variants canonical"):
        build_corpus([small_jsonl], tmp_path / "out", variants=("cloud",), engine="moyo")
    assert not (tmp_path / "out").exists()
