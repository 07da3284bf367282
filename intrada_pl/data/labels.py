"""Label tables: the Cityscapes 19-class space and every dataset's mapping into it.

All models, losses and metrics in intrada_pl work in *train IDs*: 0..18 in the Cityscapes
order below, 255 = ignore. Each dataset stores something else on disk (Cityscapes label ids,
SYNTHIA ids, Mapillary indices, WildDash2 panoptic categories, ...); this module is the one
place that knows how to translate them. Only numpy is imported here (no torch, no
cityscapesscripts) so that any tool can use the tables cheaply.

Conventions
-----------
* Lookup tables (``*_LUT``) are ``np.uint8`` arrays of length 256 indexed by the on-disk value;
  anything not explicitly mapped goes to ``IGNORE_INDEX`` (255). Never map "void" to 0.
* Use :func:`map_ids` to apply a LUT to arrays of any integer dtype (values outside the table,
  e.g. 16-bit SYNTHIA values > 255 or negative sentinels, become 255).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "NUM_CLASSES", "IGNORE_INDEX", "CLASS_NAMES", "PALETTE", "ID_PALETTE", "CITYSCAPES_ID_NAMES",
    "CITYSCAPES_ID_TO_TRAIN_ID", "TRAIN_ID_TO_CITYSCAPES_ID",
    "ID_TO_TRAIN_ID_LUT", "TRAIN_ID_TO_ID_LUT", "TRAIN_ID_LUT",
    "SYNTHIA_CLASS_NAMES", "SYNTHIA_TO_TRAIN_ID", "SYNTHIA_TO_TRAIN_ID_LUT", "synthia_to_train_id",
    "MAPILLARY_V12_NAMES", "MAPILLARY_V12_COLORS", "MAPILLARY_NAME_TO_TRAIN_ID",
    "MAPILLARY_V12_TO_TRAIN_ID_LUT", "mapillary_lut",
    "WILDDASH2_BETA_NAMES", "WILDDASH2_V2_NAMES", "WILDDASH2_TO_CITYSCAPES", "WILDDASH2_NAME_TO_TRAIN_ID",
    "WILDDASH2_TO_TRAIN_ID_LUT", "WILDDASH2_V2_TO_TRAIN_ID_LUT", "wilddash2_key", "wilddash2_lut",
    "wilddash2_unknown",
    "EVAL_SUBSETS", "make_lut", "map_ids", "colorize",
]

NUM_CLASSES = 19
IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Cityscapes label ids 0..33: name and colour (cityscapesscripts.helpers.labels).
# Several ids share a colour (0-4 are black, pole/polegroup are grey): this is why colour
# images must never be used to recover ids (see the GTA5 loader).
_CITYSCAPES_IDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("unlabeled", (0, 0, 0)), ("ego vehicle", (0, 0, 0)), ("rectification border", (0, 0, 0)),
    ("out of roi", (0, 0, 0)), ("static", (0, 0, 0)), ("dynamic", (111, 74, 0)),
    ("ground", (81, 0, 81)), ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)),
    ("parking", (250, 170, 160)), ("rail track", (230, 150, 140)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("guard rail", (180, 165, 180)),
    ("bridge", (150, 100, 100)), ("tunnel", (150, 120, 90)), ("pole", (153, 153, 153)),
    ("polegroup", (153, 153, 153)), ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)), ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)),
    ("caravan", (0, 0, 90)), ("trailer", (0, 0, 110)), ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
)
CITYSCAPES_ID_NAMES: tuple[str, ...] = tuple(n for n, _ in _CITYSCAPES_IDS)

#: Cityscapes label id -> train id for the 19 evaluated classes (all other ids -> 255).
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
TRAIN_ID_TO_CITYSCAPES_ID: dict[int, int] = {t: i for i, t in CITYSCAPES_ID_TO_TRAIN_ID.items()}


def make_lut(mapping: Mapping[int, int], fill: int = IGNORE_INDEX, size: int = 256) -> np.ndarray:
    """A ``uint8`` lookup table of ``size`` entries: ``mapping`` where given, ``fill`` elsewhere."""
    lut = np.full(size, fill, dtype=np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def map_ids(arr: np.ndarray, lut: np.ndarray, fill: int = IGNORE_INDEX) -> np.ndarray:
    """Apply ``lut`` to an integer array of any dtype; values outside ``[0, len(lut))`` -> ``fill``.

    uint8 input with a 256-entry table takes a single fancy-indexing pass (the hot path).
    """
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and len(lut) >= 256:
        return lut[arr]
    if arr.dtype.kind not in "iub":
        raise TypeError(f"label arrays must be integer, got {arr.dtype}")
    valid = (arr >= 0) & (arr < len(lut))
    if valid.all():
        return lut[arr]
    out = np.full(arr.shape, fill, dtype=lut.dtype)
    out[valid] = lut[arr[valid]]
    return out


#: Cityscapes / GTA5 / Synscapes label ids -> train ids.
ID_TO_TRAIN_ID_LUT: np.ndarray = make_lut(CITYSCAPES_ID_TO_TRAIN_ID)
#: Train ids -> Cityscapes label ids, for files the official Cityscapes evaluation reads.
#: 255 (and anything else unmapped) -> 0 "unlabeled": the evaluator indexes its tables with
#: the pixel value, so 255 would crash it and 0..18 would be silently misread as ids.
TRAIN_ID_TO_ID_LUT: np.ndarray = make_lut(TRAIN_ID_TO_CITYSCAPES_ID, fill=0)
#: Identity on 0..18, everything else -> 255: sanitises data that is already in train ids
#: (BDD100K, ACDC) without assuming it is clean.
TRAIN_ID_LUT: np.ndarray = make_lut({t: t for t in range(NUM_CLASSES)})

#: Train-id colours (Cityscapes colours of the 19 classes).
PALETTE: np.ndarray = np.array(
    [_CITYSCAPES_IDS[TRAIN_ID_TO_CITYSCAPES_ID[t]][1] for t in range(NUM_CLASSES)], dtype=np.uint8
)
#: Cityscapes-id colours (256 x 3, ids >= 34 black): the palette of GTA5 label PNGs and the
#: colour of Cityscapes ``_gtFine_color.png``.
ID_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
ID_PALETTE[: len(_CITYSCAPES_IDS)] = [c for _, c in _CITYSCAPES_IDS]

_TRAIN_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_TRAIN_COLOR_LUT[:NUM_CLASSES] = PALETTE


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """HxW train ids -> HxWx3 uint8 RGB using :data:`PALETTE`; 255 (and any non-class value) -> black."""
    train_ids = np.asarray(train_ids)
    if train_ids.dtype != np.uint8:
        train_ids = map_ids(train_ids, np.arange(256, dtype=np.uint8), fill=IGNORE_INDEX)
    return _TRAIN_COLOR_LUT.take(train_ids, axis=0)  # = _TRAIN_COLOR_LUT[train_ids], ~4x faster


# --------------------------------------------------------------------------------------------
# SYNTHIA-RAND-CITYSCAPES: class id = R channel of the 16-bit GT/LABELS PNGs (README ids 0..22).
SYNTHIA_CLASS_NAMES: tuple[str, ...] = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
    "traffic sign", "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work",
    "traffic light", "terrain", "rider", "truck", "bus", "train", "wall", "lanemarking",
)
#: SYNTHIA id -> train id (DAFormer/ADVENT family). 0 void, 13 parking-slot, 14 road-work and
#: 22 lanemarking -> 255. Terrain/truck/train (16/18/20) never occur in the data, hence the
#: 16- and 13-class evaluation subsets.
SYNTHIA_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
SYNTHIA_TO_TRAIN_ID_LUT: np.ndarray = make_lut(SYNTHIA_TO_TRAIN_ID)


def synthia_to_train_id(arr: np.ndarray) -> np.ndarray:
    """SYNTHIA class ids (uint16 R channel) -> train ids; values > 255 -> 255."""
    return map_ids(arr, SYNTHIA_TO_TRAIN_ID_LUT)


# --------------------------------------------------------------------------------------------
# Mapillary Vistas v1.2 (66 classes, label PNG value = index into config_v1.2.json["labels"]).
#
# There is no official 19-class mapping. We fix the common name-based one (unipercept
# ``CLASSES_AS_CITYSCAPES``) and apply it BY NAME to whatever config the dataset ships, so a
# config with a different index order still maps correctly. For the stock v1.2 (and v1.1)
# config, the resulting index table is (index: name -> train id; unlisted indices -> 255):
#
#    2 curb -> 1 sidewalk         3 fence -> 4               6 wall -> 3
#    7 bike-lane -> 0 road        8 crosswalk-plain -> 0     9 curb-cut -> 1
#   11 pedestrian-area -> 1      13 road -> 0               14 service-lane -> 0
#   15 sidewalk -> 1             17 building -> 2           19 person -> 11
#   20 bicyclist -> 12           21 motorcyclist -> 12      22 other-rider -> 12
#   23 crosswalk-zebra -> 0      24 marking-general -> 0    25 mountain -> 9
#   26 sand -> 9                 27 sky -> 10               29 terrain -> 9
#   30 vegetation -> 8           41 manhole -> 0            43 pothole -> 0
#   44 street-light -> 5         45 support-pole -> 5       46 traffic-sign-frame -> 5
#   47 utility-pole -> 5         48 traffic-light -> 6      50 traffic-sign-front -> 7
#   52 bicycle -> 18             54 bus -> 15               55 car -> 13
#   57 motorcycle -> 17          58 on-rails -> 16          61 truck -> 14
#
# Deliberately ignored (other repos differ here): guard-rail (4), parking (10), rail-track (12),
# bridge (16), tunnel (18), snow (28), water (31), traffic-sign-back (49), caravan (56),
# trailer (60), other-vehicle (59), wheeled-slow (62) and all void/object classes.
MAPILLARY_V12_NAMES: tuple[str, ...] = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb",
    "construction--barrier--fence", "construction--barrier--guard-rail",
    "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain",
    "construction--flat--curb-cut", "construction--flat--parking",
    "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane",
    "construction--flat--sidewalk", "construction--structure--bridge",
    "construction--structure--building", "construction--structure--tunnel", "human--person",
    "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand",
    "nature--sky", "nature--snow", "nature--terrain", "nature--vegetation", "nature--water",
    "object--banner", "object--bench", "object--bike-rack", "object--billboard",
    "object--catch-basin", "object--cctv-camera", "object--fire-hydrant", "object--junction-box",
    "object--mailbox", "object--manhole", "object--phone-booth", "object--pothole",
    "object--street-light", "object--support--pole", "object--support--traffic-sign-frame",
    "object--support--utility-pole", "object--traffic-light", "object--traffic-sign--back",
    "object--traffic-sign--front", "object--trash-can", "object--vehicle--bicycle",
    "object--vehicle--boat", "object--vehicle--bus", "object--vehicle--car",
    "object--vehicle--caravan", "object--vehicle--motorcycle", "object--vehicle--on-rails",
    "object--vehicle--other-vehicle", "object--vehicle--trailer", "object--vehicle--truck",
    "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle", "void--unlabeled",
)
#: Palette colours for the 66 classes (as in the public config; used for writing/visualising only,
#: decoding always uses the palette *indices*).
MAPILLARY_V12_COLORS: tuple[tuple[int, int, int], ...] = (
    (165, 42, 42), (0, 192, 0), (196, 196, 196), (190, 153, 153), (180, 165, 180),
    (90, 120, 150), (102, 102, 156), (128, 64, 255), (140, 140, 200), (170, 170, 170),
    (250, 170, 160), (96, 96, 96), (230, 150, 140), (128, 64, 128), (110, 110, 110),
    (244, 35, 232), (150, 100, 100), (70, 70, 70), (150, 120, 90), (220, 20, 60), (255, 0, 0),
    (255, 0, 100), (255, 0, 200), (200, 128, 128), (255, 255, 255), (64, 170, 64),
    (230, 160, 50), (70, 130, 180), (190, 255, 255), (152, 251, 152), (107, 142, 35),
    (0, 170, 30), (255, 255, 128), (250, 0, 30), (100, 140, 180), (220, 220, 220),
    (220, 128, 128), (222, 40, 40), (100, 170, 30), (40, 40, 40), (33, 33, 33), (100, 128, 160),
    (142, 0, 0), (70, 100, 150), (210, 170, 100), (153, 153, 153), (128, 128, 128), (0, 0, 80),
    (250, 170, 30), (192, 192, 192), (220, 220, 0), (140, 140, 20), (119, 11, 32),
    (150, 0, 255), (0, 60, 100), (0, 0, 142), (0, 0, 90), (0, 0, 230), (0, 80, 100),
    (128, 64, 64), (0, 0, 110), (0, 0, 70), (0, 0, 192), (32, 32, 32), (120, 10, 10), (0, 0, 0),
)
_V = "construction--"
#: Vistas class name -> train id; names not listed map to 255.
MAPILLARY_NAME_TO_TRAIN_ID: dict[str, int] = {
    _V + "flat--road": 0, _V + "flat--service-lane": 0, _V + "flat--bike-lane": 0,
    _V + "flat--crosswalk-plain": 0, "marking--general": 0, "marking--crosswalk-zebra": 0,
    "object--manhole": 0, "object--pothole": 0,
    _V + "flat--sidewalk": 1, _V + "barrier--curb": 1, _V + "flat--curb-cut": 1,
    _V + "flat--pedestrian-area": 1,
    _V + "structure--building": 2,
    _V + "barrier--wall": 3,
    _V + "barrier--fence": 4,
    "object--support--pole": 5, "object--support--utility-pole": 5, "object--street-light": 5,
    "object--support--traffic-sign-frame": 5,
    "object--traffic-light": 6,
    "object--traffic-sign--front": 7,
    "nature--vegetation": 8,
    "nature--terrain": 9, "nature--sand": 9, "nature--mountain": 9,
    "nature--sky": 10,
    "human--person": 11,
    "human--rider--bicyclist": 12, "human--rider--motorcyclist": 12, "human--rider--other-rider": 12,
    "object--vehicle--car": 13,
    "object--vehicle--truck": 14,
    "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16,
    "object--vehicle--motorcycle": 17,
    "object--vehicle--bicycle": 18,
}
del _V


def mapillary_lut(names: Sequence[str]) -> np.ndarray:
    """LUT for a Vistas label PNG whose value ``i`` means class ``names[i]`` (from the config)."""
    if len(names) > 256:
        raise ValueError(f"Mapillary config has {len(names)} classes; 8-bit labels allow 256")
    return make_lut({i: MAPILLARY_NAME_TO_TRAIN_ID[n] for i, n in enumerate(names)
                     if n in MAPILLARY_NAME_TO_TRAIN_ID})


MAPILLARY_V12_TO_TRAIN_ID_LUT: np.ndarray = mapillary_lut(MAPILLARY_V12_NAMES)

# --------------------------------------------------------------------------------------------
# WildDash2: COCO panoptic ground truth; ``panoptic.json["categories"]`` names every category id.
#
# Two public releases differ in their categories:
#   * the beta: 39 categories, 0..33 = the Cityscapes labels under their Cityscapes names
#     ("ego vehicle", ..., "train"), plus 34 pickup, 35 van, 36 billboard, 37 street-light,
#     38 road-marking (WILDDASH2_BETA_NAMES);
#   * the final release ``wd_public_v2p0``: 81 categories 0..80, names without spaces
#     ("egovehicle", "trafficlight", ...), 0..38 as in the beta, 39..80 finer classes of the
#     unified label policy (curb, utilitypole, motorcyclist, crosswalkzebra, ...)
#     (WILDDASH2_V2_NAMES).
# Labels are therefore mapped by category NAME (like Mapillary), read from the dataset's own
# panoptic.json. The mapping is the official one: the ``cs_name`` column of
# ``wd2_unified_label_policy.json`` (ozendelait/wilddash_scripts; Table 1 of the WildDash2 paper's
# supplement), i.e. what ``remap_coco.py --trg_dataset cs`` + ``pano2sem.py`` produce, followed by
# Cityscapes id -> train id. Names are compared lower-case without spaces, '-' and '_'
# (:func:`wilddash2_key`), so "street-light" (beta) and "streetlight" (v2.0) are one entry.
# A name the table does not list is scored as ignore and the loader warns once, naming it.
WILDDASH2_BETA_NAMES: tuple[str, ...] = CITYSCAPES_ID_NAMES + (
    "pickup", "van", "billboard", "street-light", "road-marking")
WILDDASH2_V2_NAMES: tuple[str, ...] = (
    "unlabeled", "egovehicle", "overlay", "outofroi", "static", "dynamic", "ground", "road",
    "sidewalk", "parking", "railtrack", "building", "wall", "fence", "guardrail", "bridge",
    "tunnel", "pole", "polegroup", "trafficlight", "trafficsign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "caravan", "trailer", "onrails", "motorcycle",
    "bicycle", "pickup", "van", "billboard", "streetlight", "roadmarking", "junctionbox",
    "mailbox", "manhole", "phonebooth", "pothole", "bikerack", "trafficsignframe", "utilitypole",
    "motorcyclist", "bicyclist", "otherrider", "bird", "groundanimal", "curb", "trafficsignany",
    "trafficsignback", "trashcan", "otherbarrier", "othervehicle", "autorickshaw", "bench",
    "mountain", "tramtrack", "wheeledslow", "boat", "bikelane", "bikelanesidewalk", "banner",
    "dashcammount", "water", "sand", "pedestrianarea", "firehydrant", "cctvcamera", "snow",
    "catchbasin", "crosswalkplain", "crosswalkzebra", "manholesidewalk", "curbterrain",
    "servicelane", "curbcut",
)


def wilddash2_key(name: str) -> str:
    """A WildDash2 category name as compared: lower case, without spaces, '-' and '_'."""
    return "".join(c for c in name.lower() if c not in " -_")


#: WildDash2 category (as :func:`wilddash2_key`) -> Cityscapes label name (the policy's cs_name).
WILDDASH2_TO_CITYSCAPES: dict[str, str] = {
    # the Cityscapes labels themselves (beta names; v2.0 writes them without spaces)
    **{wilddash2_key(n): n for n in CITYSCAPES_ID_NAMES},
    "overlay": "rectification border",   # v2.0's name for id 2 (logos, timestamps, borders)
    "onrails": "train",                  # v2.0's name for id 31 (trains and trams)
    "trafficsignfront": "traffic sign",  # id 20 as some copies of the v2.0 json name it
    "dashcammount": "ego vehicle",
    # -> road: painted markings and surface details belong to the road they are on; lanes
    # for bikes / service traffic and embedded tram tracks are drivable road surface; the
    # policy also puts pedestrian areas on road (Mapillary mappings usually say sidewalk)
    "roadmarking": "road", "crosswalkplain": "road", "crosswalkzebra": "road",
    "manhole": "road", "pothole": "road", "catchbasin": "road",
    "bikelane": "road", "servicelane": "road", "tramtrack": "road", "pedestrianarea": "road",
    # -> sidewalk: the curb and curb cuts (Cityscapes labels curbs as sidewalk), a bike lane
    # that is part of the sidewalk, a manhole cover in the sidewalk
    "curb": "sidewalk", "curbcut": "sidewalk", "bikelanesidewalk": "sidewalk",
    "manholesidewalk": "sidewalk",
    "curbterrain": "terrain",            # a curb between road and grass, no sidewalk behind it
    "otherbarrier": "wall",              # concrete barriers, walls of other kinds
    "trafficsignframe": "pole", "utilitypole": "pole",   # Cityscapes: all poles, sign frames too
    "motorcyclist": "rider", "bicyclist": "rider", "otherrider": "rider",
    "pickup": "truck",                   # Cityscapes labels pickups as trucks
    "van": "car",                        # Cityscapes labels vans as cars
    "autorickshaw": "motorcycle",
    # -> ignored (Cityscapes static / dynamic / ground). Unlike our Mapillary table, the policy
    # ignores street lights (lamp heads, not poles) and mountains.
    "billboard": "static", "streetlight": "static", "junctionbox": "static", "mailbox": "static",
    "phonebooth": "static", "bikerack": "static", "trafficsignany": "static",
    "trafficsignback": "static", "trashcan": "static", "bench": "static", "mountain": "static",
    "firehydrant": "static", "cctvcamera": "static",
    "bird": "dynamic", "groundanimal": "dynamic", "othervehicle": "dynamic",
    "wheeledslow": "dynamic", "boat": "dynamic", "banner": "dynamic",
    "water": "ground", "sand": "ground", "snow": "ground",
}
#: WildDash2 category (as :func:`wilddash2_key`) -> train id (255 = ignore).
WILDDASH2_NAME_TO_TRAIN_ID: dict[str, int] = {
    k: CITYSCAPES_ID_TO_TRAIN_ID.get(CITYSCAPES_ID_NAMES.index(v), IGNORE_INDEX)
    for k, v in WILDDASH2_TO_CITYSCAPES.items()
}


def wilddash2_unknown(names: Iterable[str]) -> list[str]:
    """The category names the policy table does not list (they are scored as ignore)."""
    return [n for n in names if wilddash2_key(n) not in WILDDASH2_NAME_TO_TRAIN_ID]


def wilddash2_lut(categories: Mapping[int, str]) -> np.ndarray:
    """LUT category id -> train id for a panoptic.json's categories ``{id: name}``."""
    size = max(256, max(categories, default=0) + 1)
    return make_lut({i: WILDDASH2_NAME_TO_TRAIN_ID.get(wilddash2_key(n), IGNORE_INDEX)
                     for i, n in categories.items()}, size=size)


#: The beta's and the v2.0 release's tables (category id -> train id), for reference and tests;
#: the loader builds its table from the dataset's own panoptic.json.
WILDDASH2_TO_TRAIN_ID_LUT: np.ndarray = wilddash2_lut(dict(enumerate(WILDDASH2_BETA_NAMES)))
WILDDASH2_V2_TO_TRAIN_ID_LUT: np.ndarray = wilddash2_lut(dict(enumerate(WILDDASH2_V2_NAMES)))

# --------------------------------------------------------------------------------------------
#: Train-id subsets for reporting mIoU: "16" = SYNTHIA protocol (no terrain/truck/train),
#: "13" = SYNTHIA mIoU* (also no wall/fence/pole).
EVAL_SUBSETS: dict[str, tuple[int, ...]] = {
    "19": tuple(range(NUM_CLASSES)),
    "16": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    "13": (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}

# The shared tables are constants: make accidental in-place edits fail loudly.
for _a in (ID_TO_TRAIN_ID_LUT, TRAIN_ID_TO_ID_LUT, TRAIN_ID_LUT, PALETTE, ID_PALETTE,
           _TRAIN_COLOR_LUT, SYNTHIA_TO_TRAIN_ID_LUT, MAPILLARY_V12_TO_TRAIN_ID_LUT,
           WILDDASH2_TO_TRAIN_ID_LUT, WILDDASH2_V2_TO_TRAIN_ID_LUT):
    _a.flags.writeable = False
del _a
