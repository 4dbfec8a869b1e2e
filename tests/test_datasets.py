"""Readers of images folders + CSV, Fitzpatrick17k, ISIC 2019 and tabular CSV/Parquet, on
small fixtures written here; values checked against the raw pixel arrays, Pillow itself
and group/class ids worked out by hand."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import torch

from fq_plugins.data import (
    ISIC2019Spec,
    decode_images,
    load_fitzpatrick17k,
    load_images,
    load_isic2019,
    load_tabular,
    stratified_split,
    tabular_features,
)
from fq_plugins.errors import ConfigError, MissingDependencyError
from fq_plugins.models import build_model

Image = pytest.importorskip("PIL.Image")


def _png(path, arr, **save):
    Image.fromarray(arr).save(path, **save)
    return str(path)


def _rand(h, w, c=3, seed=0):
    shape = (h, w, c) if c > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


# --- decoding ------------------------------------------------------------------------


def test_native_size_and_centre_crop_are_the_raw_pixels(tmp_path):
    a = _rand(8, 8, seed=1)
    wide = _rand(8, 13, seed=2)  # w=13: crop columns 2..9 (odd pixel to the right)
    tall = _rand(11, 8, seed=3)  # h=11: crop rows 1..8
    grey = _rand(8, 8, c=1, seed=4)
    paths = [
        _png(tmp_path / "a.png", a),
        _png(tmp_path / "w.png", wide),
        _png(tmp_path / "t.png", tall),
        _png(tmp_path / "g.png", grey),
    ]
    x, ok = decode_images(paths, image_size=8, resize="crop")
    assert ok.all() and x.dtype == torch.float32 and x.shape == (4, 3, 8, 8)
    expect = [a, wide[:, 2:10], tall[1:9], np.repeat(grey[:, :, None], 3, axis=2)]
    for i, e in enumerate(expect):
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), e.astype(np.float32) / 255)


def test_resized_pixels_match_pillow(tmp_path):
    src = _rand(30, 40, seed=5)
    p = _png(tmp_path / "r.png", src)
    x, _ = decode_images([p], image_size=12, resize="stretch")
    ref = np.asarray(Image.open(p).convert("RGB").resize((12, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy() * 255, ref.astype(np.float32))
    x, _ = decode_images([p], image_size=12, resize="crop")
    ref = np.asarray(Image.fromarray(src[:, 5:35]).resize((12, 12), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy() * 255, ref, atol=1e-4)
    # a flat colour stays that colour through any resampling
    flat = np.full((17, 23, 3), (10, 200, 77), dtype=np.uint8)
    x, _ = decode_images([_png(tmp_path / "f.png", flat)], image_size=5)
    assert torch.allclose(x[0, :, 2, 2] * 255, torch.tensor([10.0, 200.0, 77.0]), atol=1e-4)


def test_exif_orientation_is_applied(tmp_path):
    a = _rand(8, 8, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180°
    p = _png(tmp_path / "o.png", a, exif=exif)
    x, _ = decode_images([p], image_size=8)
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy() * 255, a[::-1, ::-1])


def test_workers_give_the_same_tensor(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", _rand(9, 7, seed=i)) for i in range(5)]
    x0, _ = decode_images(paths, image_size=6, batch_size=2)
    x2, _ = decode_images(paths, image_size=6, batch_size=2, workers=2)
    assert torch.equal(x0, x2)


def test_missing_and_unreadable_images_name_the_file(tmp_path):
    good = _png(tmp_path / "good.png", _rand(8, 8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ConfigError, match=r"nothere\.jpg"):
        decode_images([good, str(tmp_path / "nothere.jpg")], image_size=8)
    for workers in (0, 1):
        with pytest.raises(ConfigError, match=r"cannot decode image .*broken\.jpg"):
            decode_images([good, str(broken)], image_size=8, workers=workers)
    x, ok = decode_images(
        [str(broken), good, str(tmp_path / "nothere.jpg")], image_size=8, on_bad_image="drop"
    )
    assert ok.tolist() == [False, True, False] and x.shape[0] == 1


# --- images folder + CSV ---------------------------------------------------------------

ROWS = [  # image, label, sex, age
    ("i0.png", "mel", "female", "70"),
    ("i1.png", "nv", "male", "30"),
    ("i2.png", "nv", "", "45"),  # no sex: dropped when sex is a group column
    ("i3.png", "bcc", "female", ""),  # no age: dropped when age is a group column
    ("i4.png", "mel", "male", "60"),
    ("i5.png", "nv", "female", "59"),
]


def _folder(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    arrays = {}
    for i, (f, *_rest) in enumerate(ROWS):
        arrays[f] = _rand(6, 6, seed=10 + i)
        _png(imgs / f, arrays[f])
    path = _csv(tmp_path / "meta.csv", ["image", "label", "sex", "age"], ROWS)
    return path, imgs, arrays


def test_images_folder_labels_groups_and_pixels(tmp_path):
    _, _, arrays = _folder(tmp_path)
    spec = {
        "csv": "meta.csv",
        "root": "imgs",
        "groups": [{"column": "sex", "values": ["female", "male"]}],
        "image_size": 6,
    }
    ds = load_images(spec, base_dir=tmp_path)
    assert ds.class_names == ["bcc", "mel", "nv"] and ds.group_names == ["sex=female", "sex=male"]
    kept = [0, 1, 3, 4, 5]
    assert ds.y.tolist() == [1, 2, 0, 1, 2] and ds.group.tolist() == [0, 1, 0, 1, 0]
    assert ds.dropped == 1 and len(ds) == 5 and ds.name == "meta.csv"
    for j, r in enumerate(kept):
        e = arrays[ROWS[r][0]].astype(np.float32) / 255
        np.testing.assert_array_equal(ds.x[j].permute(1, 2, 0).numpy(), e)


def test_images_folder_intersectional_groups(tmp_path):
    _folder(tmp_path)
    spec = {
        "csv": str(tmp_path / "meta.csv"),
        "root": str(tmp_path / "imgs"),
        "groups": [{"column": "age", "threshold": 60}, {"column": "sex"}],
        "image_size": 6,
        "classes": ["nv", "mel"],
    }
    ds = load_images(spec)
    # rows kept: label in {nv, mel} and age and sex present → 0, 1, 4, 5
    # mixed radix (age slowest): age<60|female=0, age<60|male=1, >=60|female=2, >=60|male=3
    # row0 70 F → 2, row1 30 M → 1, row4 60 M → 3, row5 59 F → 0 (all four occur)
    assert ds.group.tolist() == [2, 1, 3, 0]
    assert ds.group_names == [
        "age<60|sex=female",
        "age<60|sex=male",
        "age>=60|sex=female",
        "age>=60|sex=male",
    ]
    assert ds.class_names == ["nv", "mel"] and ds.y.tolist() == [1, 0, 1, 0]
    assert ds.dropped == 2


def test_images_folder_groups_nobody_falls_in_are_left_out(tmp_path):
    _folder(tmp_path)
    spec = {
        "csv": str(tmp_path / "meta.csv"),
        "groups": [{"column": "age", "threshold": 60}, {"column": "sex"}],
        "root": str(tmp_path / "imgs"),
        "image_size": 6,
        "classes": ["nv", "bcc"],
    }
    ds = load_images(spec)  # nv rows 1 (30 M), 5 (59 F); bcc row 3 has no age
    assert ds.group_names == ["age<60|sex=female", "age<60|sex=male"]
    assert ds.group.tolist() == [1, 0]


def test_images_folder_errors(tmp_path):
    _folder(tmp_path)
    base = {"csv": "meta.csv", "root": "imgs", "image_size": 6}
    with pytest.raises(
        ConfigError, match=r"no column 'gender'.*Did you mean 'sex'|no column 'gender'"
    ):
        load_images({**base, "groups": [{"column": "gender"}]}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"classes \['scc'\] do not occur"):
        load_images(
            {**base, "groups": [{"column": "sex"}], "classes": ["nv", "scc"]}, base_dir=tmp_path
        )
    with pytest.raises(ConfigError, match=r"'age'.*holds 'old'"):
        _csv(tmp_path / "bad.csv", ["image", "label", "age"], [("i0.png", "nv", "old")])
        load_images(
            {**base, "csv": "bad.csv", "groups": [{"column": "age", "threshold": 60}]},
            base_dir=tmp_path,
        )
    (tmp_path / "imgs" / "i4.png").unlink()
    with pytest.raises(ConfigError, match=r"i4\.png"):
        load_images({**base, "groups": [{"column": "sex"}]}, base_dir=tmp_path)
    ds = load_images(
        {**base, "groups": [{"column": "sex"}], "on_bad_image": "drop"}, base_dir=tmp_path
    )
    assert ds.dropped == 2 and len(ds) == 4
    with pytest.raises(ConfigError, match=r"imagesize: unknown key.*Did you mean .image_size."):
        load_images({**base, "groups": [{"column": "sex"}], "imagesize": 3}, base_dir=tmp_path)


def test_max_examples_decodes_the_rows_run_would_pick(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = []
    for i in range(40):
        _png(imgs / f"{i}.png", _rand(4, 4, seed=100 + i))
        rows.append((f"{i}.png", str(i % 3), "ab"[i % 2]))
    _csv(tmp_path / "m.csv", ["image", "label", "g"], rows)
    spec = {
        "csv": str(tmp_path / "m.csv"),
        "root": str(imgs),
        "groups": [{"column": "g"}],
        "image_size": 4,
    }
    full = load_images(spec)
    _, want = stratified_split(full, 12 / len(full), 7)
    got = load_images(spec, max_examples=12, seed=7)
    assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
    assert torch.equal(got.group, want.group) and got.dropped == 40 - len(got)


# --- Fitzpatrick17k --------------------------------------------------------------------

FITZ_HEADER = [
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
]
FITZ = [  # md5, scale, label, nine, three
    ("a1", 1, "psoriasis", "inflammatory", "non-neoplastic"),
    ("b2", 4, "melanoma", "malignant melanoma", "malignant"),
    ("c3", -1, "psoriasis", "inflammatory", "non-neoplastic"),
    ("d4", 6, "basal cell carcinoma", "malignant epidermal", "malignant"),
    ("e5", 3, "seborrheic keratosis", "benign epidermal", "benign"),
    ("f6", 2, "melanoma", "malignant melanoma", "malignant"),
]


def _fitz(tmp_path, rows=FITZ):
    imgs = tmp_path / "images"
    imgs.mkdir(exist_ok=True)
    for i, (h, *_r) in enumerate(rows):
        Image.fromarray(_rand(10, 10, seed=30 + i)).save(imgs / f"{h}.jpg", quality=90)
    table = [(h, s, s, lab, nine, three, "", f"http://x/{h}", h) for h, s, lab, nine, three in rows]
    return _csv(tmp_path / "fitzpatrick17k.csv", FITZ_HEADER, table)


def test_fitzpatrick_binary_and_six(tmp_path):
    _fitz(tmp_path)
    spec = {"csv": "fitzpatrick17k.csv", "images": "images", "image_size": 10}
    ds = load_fitzpatrick17k(spec, base_dir=tmp_path)
    assert ds.name == "fitzpatrick17k" and ds.dropped == 1  # c3: type −1
    assert ds.group_names == ["fitzpatrick=1-3", "fitzpatrick=4-6"]
    assert ds.group.tolist() == [0, 1, 1, 0, 0]  # a1 1, b2 4, d4 6, e5 3, f6 2
    assert ds.class_names == ["benign", "malignant", "non-neoplastic"]
    assert ds.y.tolist() == [2, 1, 1, 0, 1]
    ref = np.asarray(Image.open(tmp_path / "images" / "d4.jpg").convert("RGB"))
    np.testing.assert_array_equal(ds.x[2].permute(1, 2, 0).numpy() * 255, ref.astype(np.float32))

    six = load_fitzpatrick17k({**spec, "groups": "six", "label": "label"}, base_dir=tmp_path)
    assert six.group_names == [f"fitzpatrick={t}" for t in (1, 2, 3, 4, 6)]  # no type 5
    assert six.group.tolist() == [0, 3, 4, 2, 1]
    assert six.class_names == [
        "basal cell carcinoma",
        "melanoma",
        "psoriasis",
        "seborrheic keratosis",
    ]
    nine = load_fitzpatrick17k({**spec, "label": "nine_partition_label"}, base_dir=tmp_path)
    assert nine.class_names[0] == "benign epidermal" and nine.n_classes == 4


def test_fitzpatrick_errors(tmp_path):
    spec = {"csv": "fitzpatrick17k.csv", "images": "images", "image_size": 10}
    _fitz(tmp_path, [*FITZ, ("z9", 7, "melanoma", "malignant melanoma", "malignant")])
    with pytest.raises(ConfigError, match=r"fitzpatrick_scale.*\[7\.0\].*1–6"):
        load_fitzpatrick17k(spec, base_dir=tmp_path)
    _fitz(tmp_path)
    (tmp_path / "images" / "e5.jpg").unlink()
    with pytest.raises(ConfigError, match=r"e5\.jpg"):
        load_fitzpatrick17k(spec, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"label"):
        load_fitzpatrick17k({**spec, "label": "diagnosis"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_fitzpatrick17k({**spec, "images": "nope"}, base_dir=tmp_path)


# --- ISIC 2019 -------------------------------------------------------------------------

DIAG = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ISIC = [  # image, diagnosis, age, site, sex
    ("ISIC_0000000", "NV", "55.0", "anterior torso", "female"),
    ("ISIC_0000001", "MEL", "70.0", "head/neck", "male"),
    ("ISIC_0000002", "BCC", "", "", "male"),
    ("ISIC_0000003_downsampled", "NV", "60.0", "lower extremity", ""),
    ("ISIC_0000004", "MEL", "35.0", "anterior torso", "female"),
    ("ISIC_0000005", "SCC", "80.0", "head/neck", "female"),
]


def _isic(tmp_path, rows=ISIC, meta_rows=None):
    imgs = tmp_path / "ISIC_2019_Training_Input"
    imgs.mkdir(exist_ok=True)
    for i, (name, *_r) in enumerate(rows):
        Image.fromarray(_rand(12, 16, seed=50 + i)).save(imgs / f"{name}.jpg")
    gt = [(n, *[f"{float(d == c):.1f}" for c in DIAG]) for n, d, *_r in rows]
    _csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", ["image", *DIAG], gt)
    meta = meta_rows or [
        (n, age, site, f"IL_{i}", sex) for i, (n, _d, age, site, sex) in enumerate(rows)
    ]
    _csv(
        tmp_path / "ISIC_2019_Training_Metadata.csv",
        ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"],
        meta,
    )
    return {
        "ground_truth_csv": "ISIC_2019_Training_GroundTruth.csv",
        "metadata_csv": "ISIC_2019_Training_Metadata.csv",
        "images": "ISIC_2019_Training_Input",
        "image_size": 8,
    }


def test_isic_classes_and_sex_groups(tmp_path):
    spec = _isic(tmp_path)
    ds = load_isic2019(spec, base_dir=tmp_path)
    assert ISIC2019Spec.model_validate(spec).groups[0].column == "sex"
    # diagnosis columns with a positive row, in file order; UNK (never 1) is no class
    assert ds.class_names == ["MEL", "NV", "BCC", "SCC"]
    assert ds.group_names == ["sex=female", "sex=male"]
    # row 3 has no sex → dropped
    assert ds.y.tolist() == [1, 0, 2, 0, 3] and ds.group.tolist() == [0, 1, 1, 0, 0]
    assert ds.dropped == 1 and ds.x.shape == (5, 3, 8, 8)
    f = tmp_path / "ISIC_2019_Training_Input" / "ISIC_0000001.jpg"
    im = Image.open(f).convert("RGB")
    ref = np.asarray(im.crop((2, 0, 14, 12)).resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ds.x[1].permute(1, 2, 0).numpy() * 255, ref, atol=1e-4)


def test_isic_age_site_intersectional(tmp_path):
    spec = _isic(tmp_path)
    ds = load_isic2019(
        {
            **spec,
            "groups": [
                {"column": "age_approx", "threshold": 60},
                {"column": "anatom_site_general"},
            ],
        },
        base_dir=tmp_path,
    )
    # rows with age and site: 0 (55, anterior torso), 1 (70, head/neck), 3 (60, lower ext.),
    # 4 (35, anterior torso), 5 (80, head/neck). Sites sorted: anterior torso, head/neck,
    # lower extremity → radix 3; id = 3·(age ≥ 60) + site.
    # raw ids: 0, 4, 5, 0, 4 → occurring {0, 4, 5} renumbered 0, 1, 2
    assert ds.group.tolist() == [0, 1, 2, 0, 1]
    assert ds.group_names == [
        "age_approx<60|anatom_site_general=anterior torso",
        "age_approx>=60|anatom_site_general=head/neck",
        "age_approx>=60|anatom_site_general=lower extremity",
    ]
    assert ds.dropped == 1


def test_isic_errors(tmp_path):
    spec = _isic(tmp_path)
    gt = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    text = gt.read_text().splitlines()
    text[2] = text[2].replace("1.0", "0.0")  # ISIC_0000001: no diagnosis
    gt.write_text("\n".join(text) + "\n")
    with pytest.raises(ConfigError, match=r"not one-hot.*ISIC_0000001"):
        load_isic2019(spec, base_dir=tmp_path)
    spec = _isic(tmp_path, meta_rows=[("ISIC_0000000", "55", "", "x", "female")])
    with pytest.raises(ConfigError, match=r"5 image\(s\).*no row in ISIC_2019_Training_Metadata"):
        load_isic2019(spec, base_dir=tmp_path)
    spec = _isic(tmp_path)
    with pytest.raises(ConfigError, match=r"classes \['UNK'\] have no positive row"):
        load_isic2019({**spec, "classes": ["MEL", "UNK"]}, base_dir=tmp_path)
    ds = load_isic2019({**spec, "classes": ["NV", "MEL"]}, base_dir=tmp_path)
    assert ds.y.tolist() == [0, 1, 1] and ds.dropped == 3


# --- tabular ---------------------------------------------------------------------------

ADULT = [  # age, hours, workclass, sex, income
    ("39", "40", "State-gov", "Male", "<=50K"),
    ("50", "13", "Self-emp", "Male", ">50K"),
    ("38", "?", "Private", "Female", "<=50K"),  # numeric missing → dropped
    ("53", "40", "?", "Female", ">50K"),  # categorical missing → its own level
    ("28", "45", "Private", "", "<=50K"),  # no group → dropped
    ("37", "80", "Private", "Female", ">50K"),
]


def test_tabular_csv_one_hot_and_groups(tmp_path):
    _csv(tmp_path / "adult.csv", ["age", "hours", "workclass", "sex", "income"], ADULT)
    spec = {"path": "adult.csv", "label": "income", "groups": [{"column": "sex"}]}
    ds = load_tabular(spec, base_dir=tmp_path)
    names = tabular_features(spec, base_dir=tmp_path)
    levels = ["<missing>", "Private", "Self-emp", "State-gov"]
    assert names == ["age", "hours", *[f"workclass={v}" for v in levels]]
    kept = [0, 1, 3, 5]
    expect = []
    for r in kept:
        age, hours, wc, *_ = ADULT[r]
        wc = "<missing>" if wc == "?" else wc
        expect.append([float(age), float(hours), *[float(wc == v) for v in levels]])
    assert ds.x.shape == (4, 6, 1, 1)
    np.testing.assert_array_equal(ds.x.flatten(1).numpy(), np.array(expect, dtype=np.float32))
    assert ds.class_names == ["<=50K", ">50K"] and ds.y.tolist() == [0, 1, 1, 1]
    assert ds.group_names == ["sex=Female", "sex=Male"] and ds.group.tolist() == [1, 1, 0, 0]
    assert ds.dropped == 2
    model = build_model("mlp", in_channels=6, image_size=1, n_classes=2)
    assert model(ds.x).shape == (4, 2)


def test_tabular_explicit_columns_and_errors(tmp_path):
    _csv(tmp_path / "adult.csv", ["age", "hours", "workclass", "sex", "income"], ADULT)
    base = {"path": str(tmp_path / "adult.csv"), "label": "income"}
    ds = load_tabular(
        {**base, "groups": [{"column": "sex"}], "numeric": ["age"], "categorical": ["sex"]}
    )
    # sex as a feature (explicitly) and a group; hours unused so row 2 is kept
    np.testing.assert_array_equal(
        ds.x.flatten(1).numpy(), [[39, 0, 1], [50, 0, 1], [38, 1, 0], [53, 1, 0], [37, 1, 0]]
    )
    with pytest.raises(ConfigError, match=r"'workclass'.*holds 'State-gov'"):
        load_tabular({**base, "groups": [{"column": "sex"}], "numeric": ["workclass"]})
    with pytest.raises(ConfigError, match="both numeric and categorical"):
        load_tabular(
            {**base, "groups": [{"column": "sex"}], "numeric": ["age"], "categorical": ["age"]}
        )
    with pytest.raises(ConfigError, match=r"cannot tell the format.*\.xlsx"):
        load_tabular({**base, "path": "a.xlsx", "groups": [{"column": "sex"}]})
    with pytest.raises(ConfigError, match=r"line 3 has 2 fields"):
        (tmp_path / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n")
        load_tabular({**base, "path": str(tmp_path / "ragged.csv"), "groups": [{"column": "b"}]})
    inter = load_tabular(
        {**base, "groups": [{"column": "sex"}, {"column": "age", "threshold": 40}]}
    )
    assert inter.group_names == [
        "sex=Female|age<40",
        "sex=Female|age>=40",
        "sex=Male|age<40",
        "sex=Male|age>=40",
    ]
    assert inter.group.tolist() == [2, 3, 1, 0]


def test_parquet_without_pyarrow_is_a_missing_dependency(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match=r"fq-plugins\[parquet\]"):
        load_tabular(
            {"path": str(tmp_path / "t.parquet"), "label": "y", "groups": [{"column": "g"}]}
        )


def test_parquet_reads_like_the_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cols = list(zip(*ADULT, strict=True))
    hours = [None if h == "?" else float(h) for h in cols[1]]
    table = pa.table(
        {
            "age": [int(a) for a in cols[0]],
            "hours": hours,
            "workclass": list(cols[2]),
            "sex": [s or None for s in cols[3]],
            "income": list(cols[4]),
        }
    )
    pq.write_table(table, tmp_path / "adult.parquet")
    _csv(tmp_path / "adult.csv", ["age", "hours", "workclass", "sex", "income"], ADULT)
    spec = {"label": "income", "groups": [{"column": "sex"}]}
    a = load_tabular({**spec, "path": str(tmp_path / "adult.parquet")})
    b = load_tabular({**spec, "path": str(tmp_path / "adult.csv")})
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.group, b.group)
    assert a.dropped == b.dropped == 2
