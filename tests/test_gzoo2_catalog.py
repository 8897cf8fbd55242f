"""GZ2 catalog reading, the nine (ten) class confidences, labels and top-k, on the real
Stripe 82 Table 5 (19,761 galaxies; docs/algorithm.md section 7)."""
from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest

from trajdistill.data import DataError
from trajdistill.gzoo2 import label_catalog, ranked, read_catalog, resolve_options
from trajdistill.gzoo2.classes import column_name, required_answers

T01 = "t01_smooth_or_features_"


@pytest.fixture(scope="module")
def table5(shared_data):
    return shared_data / "gz2" / "gz2_stripe82_table5.csv.gz"


@pytest.fixture(scope="module")
def raw_rows(table5):
    """The table read with plain csv code: a list of {column: string} dicts."""
    with gzip.open(table5, "rt", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def labelled(table5):
    return label_catalog(table5, votes="fraction", tree=9, progress=False)


def hand_confidences(row: dict, votes: str = "fraction", tree: int = 9) -> list[float]:
    """The section 7 table written out, from the raw strings of one catalog row."""
    def p(stem):
        return float(row[f"{stem}_{votes}"])
    smooth = p(T01 + "a01_smooth")
    features = p(T01 + "a02_features_or_disk")
    star = p(T01 + "a03_star_or_artifact")
    edge_on, not_edge_on = p("t02_edgeon_a04_yes"), p("t02_edgeon_a05_no")
    bar, no_bar = p("t03_bar_a06_bar"), p("t03_bar_a07_no_bar")
    spiral, no_spiral = p("t04_spiral_a08_spiral"), p("t04_spiral_a09_no_spiral")
    round_, in_between = p("t07_rounded_a16_completely_round"), p("t07_rounded_a17_in_between")
    cigar = p("t07_rounded_a18_cigar_shaped")
    bulge_round, bulge_boxy = p("t09_bulge_shape_a25_rounded"), p("t09_bulge_shape_a26_boxy")
    no_bulge = p("t09_bulge_shape_a27_no_bulge")
    conf = [
        smooth * round_,                                   # 0 smooth, completely round
        smooth * in_between,                               # 1 smooth, in between
        smooth * cigar,                                    # 2 smooth, cigar-shaped
        features * edge_on * (bulge_round + bulge_boxy),   # 3 edge-on, with bulge
        features * edge_on * no_bulge,                     # 4 edge-on, no bulge
        features * not_edge_on * bar * spiral,             # 5 bar, spiral
        features * not_edge_on * bar * no_spiral,          # 6 bar, no spiral
        features * not_edge_on * no_bar * spiral,          # 7 no bar, spiral
        features * not_edge_on * no_bar * no_spiral,       # 8 no bar, no spiral
    ]
    return conf + [star] if tree == 10 else conf


def hand_label(conf: list[float]) -> int:
    """Most confident class, first one on a tie; -1 when nothing has any confidence."""
    best = max(conf)
    return conf.index(best) if best > 0 else -1


def test_first_row_by_hand(labelled):
    # Line 2 of the file, objid 8647474690312307154: smooth 0.625, features 0.312,
    # edge-on 0.2 / not 0.8, bar 0.5 / no bar 0.5, spiral 0.25 / no 0.75,
    # round 0.091, in between 0.818, cigar 0.091, bulge rounded 1.0, boxy 0, none 0.
    cat, conf, labels, best = labelled
    i = int(np.flatnonzero(cat.ids == 8647474690312307154)[0])
    expected = [0.625 * 0.091, 0.625 * 0.818, 0.625 * 0.091,
                0.312 * 0.2 * (1.0 + 0.0), 0.312 * 0.2 * 0.0,
                0.312 * 0.8 * 0.5 * 0.25, 0.312 * 0.8 * 0.5 * 0.75,
                0.312 * 0.8 * 0.5 * 0.25, 0.312 * 0.8 * 0.5 * 0.75]
    assert conf[i].tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[1] == pytest.approx(0.51125)
    assert labels[i] == 1 and best[i] == pytest.approx(0.51125)


@pytest.mark.parametrize("votes", ["fraction", "debiased"])
def test_confidences_match_hand_computation(table5, raw_rows, votes):
    cat, conf, labels, best = label_catalog(table5, votes=votes, progress=False)
    row_of = {int(r["objid"]): r for r in raw_rows}
    # the first rows of the file plus, for each class, its most confident galaxy
    picks = [int(r["objid"]) for r in raw_rows[:5]]
    picks += [int(cat.ids[ranked(cat.ids, labels, best, c)[0]]) for c in range(9)]
    for objid in picks:
        i = int(np.flatnonzero(cat.ids == objid)[0])
        hand = hand_confidences(row_of[objid], votes)
        assert conf[i].tolist() == pytest.approx(hand, rel=1e-12, abs=1e-15), objid
        assert labels[i] == hand_label(hand), objid


def test_every_label_matches_hand_rule(labelled, raw_rows):
    cat, _, labels, _ = labelled
    hand = np.array([hand_label(hand_confidences(r)) for r in raw_rows])
    assert [int(r["objid"]) for r in raw_rows] == cat.ids.tolist()  # file order kept
    assert np.array_equal(labels, hand)


def test_class_counts_on_stripe82(labelled, table5):
    _, _, labels, _ = labelled
    assert len(labels) == 19761
    counts = np.bincount(labels[labels >= 0], minlength=9).tolist()
    # smooth round, in between, cigar, edge-on bulge / no bulge, bar spiral / no spiral,
    # no bar spiral / no spiral; 2 galaxies (voted 100 % star/artifact) get no label
    assert counts == [5911, 8121, 1972, 485, 105, 840, 109, 1932, 284]
    assert int((labels < 0).sum()) == 2
    _, _, deb, _ = label_catalog(table5, votes="debiased", progress=False)
    assert np.bincount(deb[deb >= 0], minlength=9).tolist() == [
        4987, 6027, 1187, 1001, 269, 1166, 461, 2676, 1985]
    _, conf10, ten, _ = label_catalog(table5, tree=10, progress=False)
    assert conf10.shape == (19761, 10)
    assert np.bincount(ten, minlength=10).tolist() == [
        5789, 8054, 1960, 480, 103, 834, 105, 1916, 264, 256]


def test_top_k_are_the_most_confident(labelled):
    cat, conf, labels, best = labelled
    for c in range(9):
        order = ranked(cat.ids, labels, best, c)
        assert (labels[order] == c).all() and len(order) == int((labels == c).sum())
        b = best[order]
        assert (np.diff(b) <= 0).all()  # most confident first
        ties = np.flatnonzero(np.diff(b) == 0)
        assert (cat.ids[order][ties] < cat.ids[order][ties + 1]).all()  # ties by ascending id
        top = order[:600]
        rest = order[600:]
        if len(rest):
            assert best[top].min() >= best[rest].max()
        # the rank key is the class's own confidence, which is the galaxy's best
        assert np.array_equal(conf[top, c], best[top])


def test_tree_ten_defaults():
    nine, ten = resolve_options(), resolve_options(tree=10)
    assert (nine.per_class, nine.test_per_class, nine.name) == (600, 100, "GZoo2_aug")
    assert (ten.per_class, ten.test_per_class) == (100, 20)
    assert resolve_options(tree=10, per_class=200).test_per_class == 40
    assert resolve_options(aug=1).name == "GZoo2"
    with pytest.raises(ValueError):
        resolve_options(per_class=5, test_per_class=5)


# ---------------------------------------------------------------- bad catalogs

@pytest.fixture(scope="module")
def head(raw_rows):
    """Header and the first 20 real rows, as lists of strings."""
    header = list(raw_rows[0].keys())
    return header, [[r[h] for h in header] for r in raw_rows[:20]]


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _columns(tree=9, votes="fraction"):
    return [column_name(a, votes) for a in required_answers(tree)]


def test_small_csv_reads_like_the_real_one(tmp_path, head, labelled):
    header, rows = head
    cat = read_catalog(_write(tmp_path / "ok.csv", header, rows), _columns(), progress=False)
    assert cat.ids.tolist() == labelled[0].ids[:20].tolist()
    assert cat.where[0] == "line 2"


def test_missing_column_is_named(tmp_path, head):
    header, rows = head
    j = header.index("t03_bar_a06_bar_fraction")
    drop = [[v for k, v in enumerate(r) if k != j] for r in rows]
    path = _write(tmp_path / "nobar.csv", header[:j] + header[j + 1:], drop)
    with pytest.raises(DataError, match=r"nobar\.csv.*missing column 't03_bar_a06_bar_fraction'"):
        label_catalog(path, progress=False)
    # the ten-class tree also needs star/artifact, 'debiased' needs its own columns
    j = header.index(T01 + "a03_star_or_artifact_fraction")
    path = _write(tmp_path / "nostar.csv", header[:j] + header[j + 1:],
                  [r[:j] + r[j + 1:] for r in rows])
    label_catalog(path, progress=False)  # nine classes do not need it
    with pytest.raises(DataError, match="a03_star_or_artifact_fraction"):
        label_catalog(path, tree=10, progress=False)
    keep = [k for k, h in enumerate(header) if not h.endswith("_debiased")]
    path = _write(tmp_path / "nodeb.csv", [header[k] for k in keep], [[r[k] for k in keep] for r in rows])
    with pytest.raises(DataError, match="t01_smooth_or_features_a01_smooth_debiased"):
        label_catalog(path, votes="debiased", progress=False)


def test_missing_id_column(tmp_path, head):
    header, rows = head
    path = _write(tmp_path / "noid.csv", ["id"] + header[1:], rows)
    with pytest.raises(DataError, match=r"noid\.csv.*'dr7objid' or 'objid'"):
        label_catalog(path, progress=False)


@pytest.mark.parametrize("bad", ["abc", "", "nan"])
def test_non_numeric_value_names_column_and_line(tmp_path, head, bad):
    header, rows = head
    rows = [list(r) for r in rows]
    rows[4][header.index("t04_spiral_a08_spiral_fraction")] = bad  # 5th data row = line 6
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=r"bad\.csv, line 6, column 't04_spiral_a08_spiral_fraction'"):
        label_catalog(path, progress=False)


def test_non_numeric_in_an_unused_column_is_ignored(tmp_path, head):
    header, rows = head
    rows = [list(r) for r in rows]
    rows[4][header.index("t05_bulge_prominence_a10_no_bulge_fraction")] = "abc"
    label_catalog(_write(tmp_path / "t05.csv", header, rows), progress=False)


def test_duplicate_ids_rejected(tmp_path, head):
    header, rows = head
    rows = [list(r) for r in rows]
    rows[6][0] = rows[2][0]
    path = _write(tmp_path / "dup.csv", header, rows)
    with pytest.raises(DataError, match=rf"dup\.csv, column 'objid': duplicate object id {rows[2][0]} "
                                        r"\(line 4 and line 8"):
        label_catalog(path, progress=False)


def test_bad_id_and_ragged_row(tmp_path, head):
    header, rows = head
    rows = [list(r) for r in rows]
    rows[1][0] = "8.6e18"
    with pytest.raises(DataError, match=r"line 3, column 'objid'.*not an integer"):
        label_catalog(_write(tmp_path / "id.csv", header, rows), progress=False)
    rows = [list(r) for r in head[1]]
    rows[3] = rows[3][:-1]
    with pytest.raises(DataError, match=r"line 5: 227 fields, the header has 228"):
        label_catalog(_write(tmp_path / "ragged.csv", header, rows), progress=False)


def test_gzip_and_fits_catalogs(tmp_path, head):
    header, rows = head
    plain = _write(tmp_path / "cat.csv", header, rows)
    gz = tmp_path / "cat.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a = label_catalog(plain, progress=False)
    b = label_catalog(gz, progress=False)
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[1], b[1])

    fits = pytest.importorskip("astropy.io.fits")
    # the main-sample layout: dr7objid as a 64-bit integer, float columns
    cols = [fits.Column(name="dr7objid", format="K", array=np.array([int(r[0]) for r in rows]))]
    for name in _columns(tree=10):
        cols.append(fits.Column(name=name, format="D",
                                array=np.array([float(r[header.index(name)]) for r in rows])))
    path = tmp_path / "zoo2MainSpecz.fits"
    fits.BinTableHDU.from_columns(cols).writeto(path)
    c = label_catalog(path, progress=False)
    assert c[0].id_column == "dr7objid"
    assert np.array_equal(c[0].ids, a[0].ids) and np.array_equal(c[1], a[1])
    # a NaN in a FITS column is reported with its row
    name = "t02_edgeon_a05_no_fraction"
    arr = np.array([float(r[header.index(name)]) for r in rows])
    arr[7] = np.nan
    cols = [c if c.name != name else fits.Column(name=name, format="D", array=arr) for c in cols]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "nan.fits")
    with pytest.raises(DataError, match=rf"nan\.fits, row 8, column '{name}'"):
        label_catalog(tmp_path / "nan.fits", progress=False)
