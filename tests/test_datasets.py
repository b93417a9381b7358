"""Dataset cards parse and match the real files; loading verifies, downloads atomically and explains failures."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from benchmark.core.errors import PertbenchError
from benchmark.core.task import LOGNORM_LAYER, lognormalize, take
from benchmark.data import datasets
from benchmark.data.datasets import (
    cards_dir,
    data_dir,
    dataset_names,
    get_card,
    list_cards,
    load_dataset,
    load_h5ad,
    sha256_file,
)

KANG = "kang2018_pbmc_ifnb.h5ad"


@pytest.fixture
def no_network(monkeypatch):
    """Make every download attempt fail as if offline, and record the attempts."""
    attempts: list[str] = []

    def fail(url: str, dest: Path) -> None:
        attempts.append(url)
        dest.write_bytes(b"partial")  # a half-written file must not survive
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(datasets, "_fetch", fail)
    return attempts


def test_cards_parse():
    cards = {c.name: c for c in list_cards()}
    assert set(cards) == {"kang2018", "kang2018_counts", "norman19", "mcfaline23"}
    assert dataset_names()[-1] == "synthetic"
    kang = cards["kang2018"]
    assert (kang.file, kang.perturbation_key, kang.control, kang.context_key) == (
        KANG,
        "condition",
        "control",
        "cell_type",
    )
    assert kang.url.startswith("https://raw.githubusercontent.com/theislab/scgen/")
    counts = cards["kang2018_counts"]
    assert counts.expression == "counts" and not counts.url and counts.source_url.endswith("sce.rda")
    assert counts.task().control_label == "ctrl" and counts.task().expression == "counts"
    assert (
        cards["norman19"].filters == {"dataset": "norman19"}
        and cards["norman19"].default_split == "holdout_combo"
    )
    assert cards["mcfaline23"].file == cards["norman19"].file
    assert all(c.citation and c.description for c in cards.values())
    assert kang.summary == "Kang et al. 2018 human PBMCs, control vs IFN-beta stimulated (log-normalized)"


def test_card_checksums_match_files(shared_data_dir):
    for card in list_cards():
        assert sha256_file(shared_data_dir / card.file) == card.sha256, card.name


@pytest.mark.parametrize(
    "name, shape, n_contexts, split",
    [
        ("kang2018", (1975, 6998), 7, "holdout_context"),
        ("kang2018_counts", (1556, 1267), 5, "holdout_context"),
        ("norman19", (3375, 500), 1, "holdout_combo"),
        ("mcfaline23", (2586, 500), 3, "holdout_context"),
    ],
)
def test_load_real_dataset(shared_data_dir, name, shape, n_contexts, split):
    ds = load_dataset(name, shared_data_dir)
    assert ds.adata.shape == shape and ds.default_split == split
    assert ds.checksum == get_card(name).sha256 and ds.source == str(shared_data_dir / get_card(name).file)
    assert len(ds.adata.obs[ds.task.context_key].cat.categories) == n_contexts
    assert ds.task.is_control(ds.adata).any()
    assert sp.isspmatrix_csr(ds.adata.X) and ds.adata.X.dtype == np.float32
    assert LOGNORM_LAYER not in ds.adata.layers  # log-normalized when read, never a second full matrix
    if name == "norman19":
        assert "KLF1+MAP2K6" in set(ds.task.perturbations(ds.adata))
        assert list(ds.adata.obs["dataset"].cat.categories) == ["norman19"]


def test_kang_read_is_quiet(shared_data_dir, recwarn):
    load_dataset("kang2018", shared_data_dir)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_corrupted_file_is_a_checksum_error(shared_data_dir, tmp_path):
    target = tmp_path / KANG
    shutil.copyfile(shared_data_dir / KANG, target)
    with open(target, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(
        PertbenchError, match=rf"checksum mismatch for .*{KANG}: expected sha256 83f89f.*, got "
    ):
        load_dataset("kang2018", tmp_path)


def test_missing_file_without_network(tmp_path, no_network):
    folder = tmp_path / "cache" / "data"
    message = rf"needs {KANG} in {folder}.*download it from https://.*download failed"
    with pytest.raises(PertbenchError, match=message):
        load_dataset("kang2018", folder)
    assert no_network and list(tmp_path.iterdir()) == []  # no temp file, no folders created for it
    (tmp_path / "other").mkdir()
    with pytest.raises(PertbenchError, match=r"download failed"):
        load_dataset("kang2018", tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []  # an existing folder is kept, and left empty


def test_offline_env_skips_download(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("PERTBENCH_OFFLINE", "1")
    with pytest.raises(PertbenchError, match=rf"needs {KANG} in {tmp_path}"):
        load_dataset("kang2018", tmp_path)
    assert not no_network


def test_missing_file_without_url_points_to_source(tmp_path, no_network):
    with pytest.raises(
        PertbenchError, match=r"kang2018_pbmc_ifnb_counts.h5ad in .*no direct download.*sce\.rda"
    ):
        load_dataset("kang2018_counts", tmp_path)
    assert not no_network


def test_download_verifies_and_renames_atomically(shared_data_dir, tmp_path, monkeypatch):
    target = tmp_path / "cache" / KANG

    def fake_fetch(url: str, dest: Path) -> None:
        assert dest.parent == target.parent and dest != target and not target.exists()
        shutil.copyfile(shared_data_dir / KANG, dest)

    monkeypatch.setattr(datasets, "_fetch", fake_fetch)
    ds = load_dataset("kang2018", target.parent)
    assert ds.adata.shape == (1975, 6998)
    assert [p.name for p in target.parent.iterdir()] == [KANG]


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_fetch", lambda url, dest: dest.write_bytes(b"<html>not found</html>"))
    with pytest.raises(PertbenchError, match=r"downloaded https://.* but its sha256 is .*nothing was saved"):
        load_dataset("kang2018", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_data_dir_env_is_honored(shared_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PERTBENCH_DATA_DIR", str(shared_data_dir))
    assert data_dir() == shared_data_dir
    assert load_dataset("mcfaline23").adata.n_obs == 2586
    monkeypatch.delenv("PERTBENCH_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_dir() == tmp_path / "pertbench" / "data"


def test_unknown_dataset_lists_known():
    with pytest.raises(
        PertbenchError, match=r"unknown dataset 'kang'; known datasets: kang2018, .*synthetic"
    ):
        load_dataset("kang")


def test_malformed_card(tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text('name = "bad"\nfile = "x.h5ad"\nexpression = "raw"\ncolour = "red"\n')
    monkeypatch.setenv("PERTBENCH_CARDS_DIR", str(tmp_path))
    assert cards_dir() == tmp_path
    with pytest.raises(
        PertbenchError, match=r"bad.toml: unknown field 'colour'.*missing field 'sha256'.*expression"
    ):
        get_card("bad")


def test_synthetic_dataset():
    ds = load_dataset("synthetic")
    assert list(ds.adata.obs["condition"].cat.categories) == ["control", "P0", "P1", "P2"]  # order kept
    assert ds.task.expression == "counts" and ds.default_split == "holdout_context"
    assert ds.checksum.startswith("synthetic:") and "seed=0" in ds.checksum
    assert ds.checksum == load_dataset("synthetic").checksum
    assert LOGNORM_LAYER not in ds.adata.layers
    np.testing.assert_array_equal(
        ds.task.lognorm(ds.adata[:5]).toarray(), lognormalize(ds.adata.X[:5]).toarray()
    )


def test_load_h5ad_user_file(small_synthetic, tmp_path):
    path = tmp_path / "mine.h5ad"
    small_synthetic.write_h5ad(path)
    ds = load_h5ad(path, "condition", "control", "cell_type", expression="counts")
    assert ds.name == "mine" and ds.checksum == sha256_file(path) and ds.default_split == "holdout_context"
    assert ds.adata.shape == small_synthetic.shape and not ds.adata.isbacked
    assert load_h5ad(path, "condition", "control", expression="counts").default_split == "holdout_combo"
    with pytest.raises(PertbenchError, match=r"looks like raw counts"):
        load_h5ad(path, "condition", "control")  # counts loaded as lognorm (the default)
    with pytest.raises(PertbenchError, match=r"perturbation key 'drug' is not an obs column"):
        load_h5ad(path, "drug", "control")
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(PertbenchError, match=r"cannot read .*junk.h5ad as h5ad"):
        load_h5ad(tmp_path / "junk.h5ad", "condition", "control")
    with pytest.raises(PertbenchError, match=r"no such file"):
        load_h5ad(tmp_path / "nope.h5ad", "condition", "control")


def test_a_backed_file_stays_on_disk_and_reads_the_same_cells(small_synthetic, tmp_path):
    path = tmp_path / "mine.h5ad"
    small_synthetic.write_h5ad(path)
    backed = load_h5ad(path, "condition", "control", "cell_type", expression="counts", backed=True)
    memory = load_h5ad(path, "condition", "control", "cell_type", expression="counts", backed=False)
    assert backed.adata.isbacked and not memory.adata.isbacked
    rows = np.array([7, 3, 100])
    np.testing.assert_array_equal(take(backed.adata, rows).X.toarray(), memory.adata.X[rows].toarray())
    with pytest.raises(PertbenchError, match=r"looks like raw counts"):
        load_h5ad(path, "condition", "control", backed=True)  # checked batch by batch on disk


def test_sparse_index_arrays_share_one_dtype_after_load():
    """A CSR with int32 indices and int64 indptr (as h5ad files often hold) is cast once at load, so row picks do
    not upcast every nnz; values and structure are unchanged."""
    from benchmark.data.datasets import one_index_dtype

    x = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    x.indices, x.indptr = x.indices.astype(np.int32), x.indptr.astype(np.int64)
    before = x.toarray()
    got = one_index_dtype(x)
    assert got.indices.dtype == got.indptr.dtype == np.int32
    np.testing.assert_array_equal(got.toarray(), before)
    np.testing.assert_array_equal(got[[3, 7]].toarray(), before[[3, 7]])
