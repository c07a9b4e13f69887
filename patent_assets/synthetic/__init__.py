"""Synthetic weekly USPTO "grant full text with embedded images" releases, made offline.

The pipeline's default data: releases in the real product's layout so that every later step
(fetch, XML parse, TIFF decode, FIG-label OCR, alignment, training) runs on it unchanged.

    I20240102.tar
      I20240102/UTIL0000/US11856001-20240102.ZIP
        US11856001-20240102/US11856001-20240102.XML        us-patent-grant, DTD v4.5
        US11856001-20240102/US11856001-20240102-D00001.TIF 1-bit, CCITT G4, 300 dpi
      I20240102/DESIGN/USD1010001-20240102.ZIP

Each patent draws one procedurally built 3-D object (a bracket, a wheel, a lamp, ...) from
several views, so the same object appears on several sheets (retrieval learns "same patent"),
and the object's class drives the title, classification and description words (captioning
can learn that the picture matters). Classes have a long-tailed frequency. Everything is a
pure function of the seed: the same seed gives the same bytes.

Generation is split in two: `plan_release` decides everything (cheap: texts, figures, which
FIG labels go on which sheet, the ground truth) and `write_release` renders and packs it.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree
from PIL import Image, ImageDraw, ImageFont

from patent_assets.records import atomic_write

DTD_DOCTYPE = '<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ ]>'
DTD_VERSION = "v4.5 2014-04-03"
DPI = 300


@dataclass(frozen=True)
class SyntheticConfig:
    """Size knobs. The default is small enough to OCR every sheet in minutes on 2 cores."""

    releases: int = 3
    patents_per_release: int = 8
    start: date = date(2024, 1, 2)  # a Tuesday: USPTO publishes grants on Tuesdays
    seed: int = 0
    sheet_width: int = 1000  # pixels of a portrait sheet; real sheets are 2550x3300 at 300 dpi
    sheet_height: int = 1400
    max_sheets_per_patent: int = 5
    design_share: float = 0.4  # share of design (S1) grants; the rest are utility (B2/B1)
    landscape_share: float = 0.2  # share of utility sheets drawn landscape
    two_figure_share: float = 0.4  # share of utility sheets holding two FIGs

    def __post_init__(self) -> None:
        if self.releases < 0 or self.patents_per_release < 1:
            raise ValueError(f"releases must be >= 0 and patents_per_release >= 1, got {self}")
        if self.sheet_width < 300 or self.sheet_height < 300:
            raise ValueError(
                f"sheets must be at least 300x300 px, got {self.sheet_width}x{self.sheet_height}"
            )
        if self.max_sheets_per_patent < 1:
            raise ValueError(f"max_sheets_per_patent must be >= 1, got {self.max_sheets_per_patent}")


# --------------------------------------------------------------------------------------------
# 3-D geometry: solids as rings of vertices, projected orthographically.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solid:
    """A lofted solid: closed rings of vertices, consecutive rings joined by generators.

    A sharp solid (a prism: box, gear, hex nut) draws every generator; a smooth one
    (cylinder, cone) draws only the silhouette generators for the view, as a draughtsman would.
    """

    rings: tuple[np.ndarray, ...]  # each (k, 3), the same k for all rings
    sharp: bool

    def transformed(self, rotation: np.ndarray, offset: Sequence[float]) -> Solid:
        return Solid(tuple(ring @ rotation.T + np.asarray(offset, float) for ring in self.rings), self.sharp)

    def polylines(self, view_dir: np.ndarray) -> list[np.ndarray]:
        lines = [np.vstack([ring, ring[:1]]) for ring in self.rings]
        for lower, upper in zip(self.rings, self.rings[1:], strict=False):
            if self.sharp:
                indices: Sequence[int] = range(len(lower))
            else:
                tangent = np.roll(lower, -1, axis=0) - np.roll(lower, 1, axis=0)
                normal = np.cross(tangent, upper - lower)
                side = np.sign(normal @ view_dir)
                indices = [
                    i for i in range(len(lower)) if side[i] != side[(i + 1) % len(lower)] and side[i] != 0
                ]
            lines.extend(np.vstack([lower[i], upper[i]]) for i in indices)
        return lines

    @property
    def vertices(self) -> np.ndarray:
        return np.vstack(self.rings)


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], float)


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], float)


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], float)


def align_z_to(direction: Sequence[float]) -> np.ndarray:
    """A rotation taking +z onto `direction` (for cylinders between two points)."""
    target = np.asarray(direction, float)
    target = target / np.linalg.norm(target)
    axis = np.cross([0.0, 0.0, 1.0], target)
    sine, cosine = np.linalg.norm(axis), float(target[2])
    if sine < 1e-9:
        return np.eye(3) if cosine > 0 else rot_x(np.pi)
    k = axis / sine
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sine * cross + (1 - cosine) * cross @ cross


def circle(radius: float, segments: int = 36) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    return np.column_stack([radius * np.cos(angles), radius * np.sin(angles)])


def extrude(outline: np.ndarray, height: float, sharp: bool) -> Solid:
    """Extrude a 2-D outline in the xy plane from z=0 to z=height."""
    bottom = np.column_stack([outline, np.zeros(len(outline))])
    top = np.column_stack([outline, np.full(len(outline), height)])
    return Solid((bottom, top), sharp)


def box(size: Sequence[float], center: Sequence[float], rotation: np.ndarray | None = None) -> Solid:
    sx, sy, sz = size
    rect = np.array([[-sx / 2, -sy / 2], [sx / 2, -sy / 2], [sx / 2, sy / 2], [-sx / 2, sy / 2]])
    solid = extrude(rect, sz, sharp=True).transformed(np.eye(3), (0, 0, -sz / 2))
    return solid.transformed(np.eye(3) if rotation is None else rotation, center)


def cylinder(
    radius: float, start: Sequence[float], end: Sequence[float], end_radius: float | None = None
) -> Solid:
    """A cylinder (or a cone frustum when `end_radius` differs) from `start` to `end`."""
    start_point, end_point = np.asarray(start, float), np.asarray(end, float)
    length = float(np.linalg.norm(end_point - start_point))
    ring = circle(1.0)
    lower = np.column_stack([ring * radius, np.zeros(len(ring))])
    upper = np.column_stack(
        [ring * (radius if end_radius is None else end_radius), np.full(len(ring), length)]
    )
    return Solid((lower, upper), sharp=False).transformed(align_z_to(end_point - start_point), start_point)


def prism(outline: np.ndarray, start: Sequence[float], end: Sequence[float]) -> Solid:
    start_point, end_point = np.asarray(start, float), np.asarray(end, float)
    length = float(np.linalg.norm(end_point - start_point))
    return extrude(outline, length, sharp=True).transformed(align_z_to(end_point - start_point), start_point)


@dataclass(frozen=True)
class Part:
    name: str  # "base plate": the description and claims use it
    solids: tuple[Solid, ...]


# --------------------------------------------------------------------------------------------
# Object classes: geometry builders and the words that go with them.
# World axes: x to the right, y away from the viewer (depth), z up.
# --------------------------------------------------------------------------------------------


def build_bracket(rng: np.random.Generator) -> list[Part]:
    width, depth, height, thick = rng.uniform(1.6, 2.6), rng.uniform(1.0, 1.6), rng.uniform(1.0, 1.8), 0.14
    base = box((width, depth, thick), (0, 0, thick / 2))
    flange = box((width, thick, height), (0, depth / 2 - thick / 2, height / 2))
    # The gusset is a right triangle in the y-z plane against the flange's front face.
    tri = np.array(
        [
            [0, depth / 2 - thick, thick],
            [0, depth / 2 - thick - depth * 0.6, thick],
            [0, depth / 2 - thick, thick + height * 0.6],
        ]
    )
    gusset = Solid((np.add(tri, (-thick / 2, 0, 0)), np.add(tri, (thick / 2, 0, 0))), sharp=True)
    holes = tuple(
        cylinder(0.12, (x, -depth * 0.15, 0), (x, -depth * 0.15, thick + 0.001))
        for x in (-width * 0.32, width * 0.32)
    )
    return [
        Part("base plate", (base,)),
        Part("upright flange", (flange,)),
        Part("gusset", (gusset,)),
        Part("mounting hole", holes),
    ]


def build_wheel(rng: np.random.Generator) -> list[Part]:
    radius, width = rng.uniform(1.2, 1.6), rng.uniform(0.35, 0.7)
    spokes = int(rng.integers(3, 9))
    axle = ((0, -width / 2, 0), (0, width / 2, 0))
    rim = (cylinder(radius, *axle), cylinder(radius * 0.85, *axle))
    hub = (cylinder(radius * 0.22, (0, -width * 0.7, 0), (0, width * 0.7, 0)),)
    spoke_solids = tuple(
        box(
            (radius * 0.64, 0.12, 0.1),
            (
                radius * 0.53 * np.cos(2 * np.pi * k / spokes),
                0,
                -radius * 0.53 * np.sin(2 * np.pi * k / spokes),
            ),
            rot_y(2 * np.pi * k / spokes),
        )
        for k in range(spokes)
    )
    bore = (cylinder(radius * 0.08, (0, -width * 0.7, 0), (0, width * 0.7, 0)),)
    return [Part("rim", rim), Part("hub", hub), Part("spoke", spoke_solids), Part("axle bore", bore)]


def build_housing(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(1.6, 2.4), rng.uniform(1.0, 1.6), rng.uniform(0.9, 1.5)
    body = box((w, d, h), (0, 0, h / 2))
    lid = box((w * 1.04, d * 1.04, h * 0.12), (0, 0, h + h * 0.06))
    buttons = tuple(
        cylinder(0.1, (x, -d / 2, h * 0.6), (x, -d / 2 - 0.08, h * 0.6)) for x in (-w * 0.3, -w * 0.15)
    )
    vents = tuple(
        box((0.02, d * 0.5, 0.06), (w / 2, 0, h * (0.25 + 0.12 * k))) for k in range(int(rng.integers(3, 6)))
    )
    return [Part("body", (body,)), Part("lid", (lid,)), Part("button", buttons), Part("vent", vents)]


def build_connector(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(1.2, 2.0), rng.uniform(1.2, 1.8), rng.uniform(0.5, 0.8)
    pins = int(rng.integers(2, 6))
    body = box((w, d, h), (0, 0, 0))
    contacts = tuple(
        cylinder(0.05, (x, -d / 2, 0), (x, -d / 2 - 0.4, 0)) for x in np.linspace(-w * 0.35, w * 0.35, pins)
    )
    latch = box((w * 0.3, d * 0.5, 0.12), (0, -d * 0.1, h / 2 + 0.06))
    cable = cylinder(h * 0.3, (0, d / 2, 0), (0, d / 2 + 0.9, 0))
    return [
        Part("connector body", (body,)),
        Part("contact pin", contacts),
        Part("latch", (latch,)),
        Part("cable", (cable,)),
    ]


def build_lamp(rng: np.random.Generator) -> list[Part]:
    base_r, stem_h = rng.uniform(0.6, 0.9), rng.uniform(1.6, 2.6)
    base = cylinder(base_r, (0, 0, 0), (0, 0, 0.18))
    stem = cylinder(0.06, (0, 0, 0.18), (0, 0, stem_h))
    shade_h = rng.uniform(0.6, 1.0)
    shade = cylinder(
        rng.uniform(0.7, 1.1),
        (0, 0, stem_h - shade_h * 0.4),
        (0, 0, stem_h + shade_h * 0.6),
        end_radius=rng.uniform(0.3, 0.55),
    )
    switch = box((0.18, 0.12, 0.1), (base_r * 0.6, -base_r * 0.2, 0.23))
    return [Part("base", (base,)), Part("stem", (stem,)), Part("shade", (shade,)), Part("switch", (switch,))]


def build_container(rng: np.random.Generator) -> list[Part]:
    r, h = rng.uniform(0.5, 0.8), rng.uniform(1.4, 2.2)
    body = cylinder(r, (0, 0, 0), (0, 0, h))
    shoulder_h = rng.uniform(0.3, 0.5)
    neck_r = r * rng.uniform(0.3, 0.45)
    shoulder = cylinder(r, (0, 0, h), (0, 0, h + shoulder_h), end_radius=neck_r)
    neck = cylinder(neck_r, (0, 0, h + shoulder_h), (0, 0, h + shoulder_h + 0.25))
    cap = cylinder(neck_r * 1.15, (0, 0, h + shoulder_h + 0.25), (0, 0, h + shoulder_h + 0.5))
    return [Part("body", (body,)), Part("shoulder", (shoulder,)), Part("neck", (neck,)), Part("cap", (cap,))]


def build_stool(rng: np.random.Generator) -> list[Part]:
    seat_r, height, legs = rng.uniform(0.7, 1.0), rng.uniform(1.6, 2.2), int(rng.choice([3, 4]))
    seat = cylinder(seat_r, (0, 0, height), (0, 0, height + 0.15))
    feet = [
        (seat_r * 1.15 * np.cos(a), seat_r * 1.15 * np.sin(a), 0)
        for a in 2 * np.pi * np.arange(legs) / legs + 0.4
    ]
    tops = [
        (seat_r * 0.7 * np.cos(a), seat_r * 0.7 * np.sin(a), height)
        for a in 2 * np.pi * np.arange(legs) / legs + 0.4
    ]
    leg_solids = tuple(cylinder(0.05, foot, top) for foot, top in zip(feet, tops, strict=True))
    ring_h = height * 0.35
    ring = cylinder(seat_r * 1.02, (0, 0, ring_h), (0, 0, ring_h + 0.05))
    return [Part("seat", (seat,)), Part("leg", leg_solids), Part("footrest ring", (ring,))]


def build_gear(rng: np.random.Generator) -> list[Part]:
    teeth, radius, width = int(rng.integers(10, 19)), rng.uniform(1.1, 1.5), rng.uniform(0.3, 0.5)
    outline = []
    for k in range(teeth):
        for frac, r in ((0.0, radius), (0.25, radius * 1.15), (0.5, radius * 1.15), (0.75, radius)):
            angle = 2 * np.pi * (k + frac) / teeth
            outline.append((r * np.cos(angle), r * np.sin(angle)))
    body = prism(np.array(outline), (0, -width / 2, 0), (0, width / 2, 0))
    hub = cylinder(radius * 0.35, (0, -width, 0), (0, width, 0))
    bore = cylinder(radius * 0.15, (0, -width, 0), (0, width, 0))
    key = box((0.08, width * 2, 0.08), (0, 0, radius * 0.15))
    return [Part("gear body", (body,)), Part("hub", (hub,)), Part("bore", (bore,)), Part("keyway", (key,))]


def build_hinge(rng: np.random.Generator) -> list[Part]:
    leaf_w, leaf_h, angle = rng.uniform(0.9, 1.3), rng.uniform(1.6, 2.4), rng.uniform(0.3, 1.2)
    knuckle = cylinder(0.12, (0, 0, 0), (0, 0, leaf_h))
    first = box((leaf_w, 0.05, leaf_h), (-leaf_w / 2 - 0.1, 0, leaf_h / 2))
    second = box(
        (leaf_w, 0.05, leaf_h), rot_z(angle) @ np.array([leaf_w / 2 + 0.1, 0, leaf_h / 2]), rot_z(angle)
    )
    holes = tuple(
        cylinder(0.07, (-leaf_w / 2 - 0.1, 0, z), (-leaf_w / 2 - 0.1, -0.06, z))
        for z in (leaf_h * 0.25, leaf_h * 0.75)
    )
    return [
        Part("first leaf", (first,)),
        Part("second leaf", (second,)),
        Part("knuckle", (knuckle,)),
        Part("screw hole", holes),
    ]


def build_handle(rng: np.random.Generator) -> list[Part]:
    span, rise = rng.uniform(2.0, 3.0), rng.uniform(0.6, 1.0)
    base = tuple(box((0.4, 0.4, 0.1), (x, 0, 0.05)) for x in (-span / 2, span / 2))
    posts = tuple(cylinder(0.09, (x, 0, 0.1), (x, 0, rise)) for x in (-span / 2, span / 2))
    grip = cylinder(0.12, (-span / 2 - 0.1, 0, rise), (span / 2 + 0.1, 0, rise))
    return [Part("grip", (grip,)), Part("post", posts), Part("mounting base", base)]


def build_table(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(2.0, 3.0), rng.uniform(1.1, 1.7), rng.uniform(1.3, 1.8)
    top = box((w, d, 0.1), (0, 0, h))
    legs = tuple(
        box((0.1, 0.1, h), (sx * (w / 2 - 0.15), sy * (d / 2 - 0.15), h / 2))
        for sx in (-1, 1)
        for sy in (-1, 1)
    )
    apron = (
        box((w - 0.3, 0.04, 0.18), (0, -(d / 2 - 0.15), h - 0.14)),
        box((w - 0.3, 0.04, 0.18), (0, d / 2 - 0.15, h - 0.14)),
    )
    return [Part("tabletop", (top,)), Part("leg", legs), Part("apron", apron)]


def build_nozzle(rng: np.random.Generator) -> list[Part]:
    r, length = rng.uniform(0.35, 0.5), rng.uniform(0.8, 1.2)
    hexagon = circle(r * 1.35, 6)
    nut = prism(hexagon, (0, 0, 0), (0, 0, 0.35))
    inlet = cylinder(r, (0, 0, -length * 0.6), (0, 0, 0))
    taper = cylinder(r, (0, 0, 0.35), (0, 0, 0.35 + length), end_radius=r * 0.35)
    tip = cylinder(r * 0.35, (0, 0, 0.35 + length), (0, 0, 0.55 + length))
    return [
        Part("inlet", (inlet,)),
        Part("hex nut", (nut,)),
        Part("tapered section", (taper,)),
        Part("outlet tip", (tip,)),
    ]


def build_speaker(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(1.0, 1.4), rng.uniform(0.9, 1.3), rng.uniform(1.8, 2.6)
    cabinet = box((w, d, h), (0, 0, h / 2))
    woofer = cylinder(w * 0.35, (0, -d / 2, h * 0.35), (0, -d / 2 - 0.06, h * 0.35))
    tweeter = cylinder(w * 0.13, (0, -d / 2, h * 0.75), (0, -d / 2 - 0.06, h * 0.75))
    port = cylinder(w * 0.08, (w * 0.3, -d / 2, h * 0.1), (w * 0.3, -d / 2 - 0.02, h * 0.1))
    return [
        Part("cabinet", (cabinet,)),
        Part("woofer", (woofer,)),
        Part("tweeter", (tweeter,)),
        Part("bass port", (port,)),
    ]


@dataclass(frozen=True)
class ObjectClass:
    name: str  # "bracket": the noun in titles and descriptions
    build: Callable[[np.random.Generator], list[Part]]
    utility_titles: tuple[str, ...]
    design_titles: tuple[str, ...]
    locarno: str  # class and subclass, e.g. "0808"
    cpc: tuple[str, str, str, str, str]  # section, class, subclass, main group, subgroup
    purpose: str  # "supports a load on a wall": what the object does, for the description
    relations: tuple[str, ...]  # sentences about parts, {a}/{b} are part names with numerals


CLASSES: tuple[ObjectClass, ...] = (
    # Most common first: the frequency across patents follows this order (long tail).
    ObjectClass(
        "bracket",
        build_bracket,
        ("Mounting bracket", "Bracket with reinforced flange", "Adjustable support bracket"),
        ("Bracket", "Mounting bracket"),
        "0808",
        ("F", "16", "M", "13", "02"),
        "supports a load on a wall or a frame",
        (
            "the {a} extends perpendicularly from the {b}",
            "the {a} is welded to the {b}",
            "the {a} stiffens the {b}",
        ),
    ),
    ObjectClass(
        "container",
        build_container,
        ("Beverage container", "Container with tapered shoulder", "Bottle with closure"),
        ("Bottle", "Container"),
        "0901",
        ("B", "65", "D", "1", "02"),
        "holds a liquid and is closed by a removable cap",
        ("the {a} tapers toward the {b}", "the {a} is threaded onto the {b}", "the {a} joins the {b}"),
    ),
    ObjectClass(
        "lamp",
        build_lamp,
        ("Table lamp", "Lamp with adjustable shade", "Lighting fixture"),
        ("Lamp", "Table lamp"),
        "2602",
        ("F", "21", "S", "6", "00"),
        "illuminates a work surface",
        ("the {a} is mounted on the {b}", "the {a} rises from the {b}", "the {a} surrounds the {b}"),
    ),
    ObjectClass(
        "wheel",
        build_wheel,
        ("Vehicle wheel", "Spoked wheel assembly", "Wheel with lightweight rim"),
        ("Wheel", "Vehicle wheel"),
        "1210",
        ("B", "60", "B", "3", "00"),
        "rotates about an axle to carry a vehicle",
        (
            "the {a} connects the {b} to the rim",
            "the {a} is concentric with the {b}",
            "the {a} extends radially from the {b}",
        ),
    ),
    ObjectClass(
        "housing",
        build_housing,
        ("Electronic device housing", "Enclosure with ventilated wall", "Housing for a controller"),
        ("Housing", "Enclosure for electronic equipment"),
        "1403",
        ("H", "05", "K", "5", "02"),
        "encloses and protects an electronic circuit",
        ("the {a} is hinged to the {b}", "the {a} is formed in the {b}", "the {a} covers the {b}"),
    ),
    ObjectClass(
        "connector",
        build_connector,
        ("Electrical connector", "Connector with locking latch", "Cable connector assembly"),
        ("Electrical connector", "Connector"),
        "1303",
        ("H", "01", "R", "13", "639"),
        "joins a cable to a mating receptacle",
        ("the {a} projects from the {b}", "the {a} locks the {b} in place", "the {a} is molded with the {b}"),
    ),
    ObjectClass(
        "stool",
        build_stool,
        ("Stool", "Stool with footrest", "Seating stool"),
        ("Stool", "Bar stool"),
        "0601",
        ("A", "47", "C", "9", "00"),
        "supports a seated person",
        ("the {a} is attached to the {b}", "the {a} braces the {b}", "the {a} is spaced below the {b}"),
    ),
    ObjectClass(
        "gear",
        build_gear,
        ("Spur gear", "Gear with keyed hub", "Power transmission gear"),
        ("Gear", "Spur gear"),
        "1504",
        ("F", "16", "H", "55", "17"),
        "transmits torque to a mating gear",
        ("the {a} is formed on the {b}", "the {a} passes through the {b}", "the {a} is coaxial with the {b}"),
    ),
    ObjectClass(
        "hinge",
        build_hinge,
        ("Door hinge", "Hinge with removable pin", "Butt hinge"),
        ("Hinge", "Door hinge"),
        "0806",
        ("E", "05", "D", "3", "02"),
        "lets a door pivot relative to a frame",
        (
            "the {a} pivots about the {b}",
            "the {a} is wrapped around the {b}",
            "the {a} is formed through the {b}",
        ),
    ),
    ObjectClass(
        "handle",
        build_handle,
        ("Pull handle", "Cabinet handle", "Handle with mounting bases"),
        ("Handle", "Pull handle"),
        "0806",
        ("E", "05", "B", "1", "00"),
        "is grasped by a hand to open a door or a drawer",
        ("the {a} is supported by the {b}", "the {a} rests on the {b}", "the {a} is fastened to the {b}"),
    ),
    ObjectClass(
        "table",
        build_table,
        ("Folding table", "Table with apron frame", "Work table"),
        ("Table", "Side table"),
        "0603",
        ("A", "47", "B", "13", "00"),
        "provides a raised working surface",
        ("the {a} supports the {b}", "the {a} is joined to the {b}", "the {a} extends below the {b}"),
    ),
    ObjectClass(
        "nozzle",
        build_nozzle,
        ("Spray nozzle", "Nozzle with tapered outlet", "Fluid nozzle assembly"),
        ("Nozzle", "Spray nozzle"),
        "2301",
        ("B", "05", "B", "1", "00"),
        "directs a jet of fluid",
        ("the {a} narrows toward the {b}", "the {a} is threaded to the {b}", "the {a} feeds the {b}"),
    ),
    ObjectClass(
        "speaker",
        build_speaker,
        ("Loudspeaker enclosure", "Speaker with bass port", "Loudspeaker"),
        ("Speaker", "Loudspeaker"),
        "1403",
        ("H", "04", "R", "1", "02"),
        "reproduces sound",
        (
            "the {a} is mounted in the {b}",
            "the {a} is located above the {b}",
            "the {a} opens through the {b}",
        ),
    ),
)
CLASS_WEIGHTS = np.array([1.0 / (rank + 1) ** 1.3 for rank in range(len(CLASSES))])
CLASS_WEIGHTS = CLASS_WEIGHTS / CLASS_WEIGHTS.sum()


# --------------------------------------------------------------------------------------------
# Views and figures.
# --------------------------------------------------------------------------------------------

VIEWS: dict[str, tuple[np.ndarray, str]] = {
    # name -> (object rotation before projecting onto the x-z plane, the words for it)
    "perspective": (rot_x(np.radians(28)) @ rot_z(np.radians(-35)), "perspective view"),
    "front": (np.eye(3), "front view"),
    "top": (rot_x(np.radians(90)), "top plan view"),
    "right": (rot_z(np.radians(-90)), "right side view"),
    "rear": (rot_z(np.radians(180)), "rear view"),
    "left": (rot_z(np.radians(90)), "left side view"),
    "bottom": (rot_x(np.radians(-90)), "bottom view"),
    "rear_perspective": (rot_x(np.radians(25)) @ rot_z(np.radians(145)), "rear perspective view"),
}
VIEW_ORDER = ("perspective", "front", "top", "right", "rear", "left", "bottom", "rear_perspective")


@dataclass
class FigurePlan:
    label: str  # "FIG. 3A" as printed on the sheet; "" for an unlabelled sole figure
    key: str  # "3A": the label's number part, as ground truth
    view: str  # a key of VIEWS
    numerals: list[int]  # reference numerals drawn with leader lines


@dataclass
class SheetPlan:
    num: int  # sheet number (D0000n)
    figures: list[FigurePlan]
    landscape: bool


@dataclass
class PatentPlan:
    doc_number: str  # "11856001" or "D1010001"
    kind: str  # B2, B1, S1
    application_type: str  # utility, design
    object_class: ObjectClass
    object_seed: int
    title: str
    application_number: str
    application_date: date
    grant_date: date
    sheets: list[SheetPlan]
    brief_paragraphs: list[str]  # mini markup: [[FIG. 1]] is a figref, **10** is bold
    detailed_paragraphs: list[str]
    summary_paragraphs: list[str]
    abstract: str
    claims: list[str]
    part_numerals: dict[str, int]
    label_prefix: str = "FIG."
    inventors: list[tuple[str, str, str]] = field(default_factory=list)  # first, last, city

    @property
    def stem(self) -> str:
        return f"US{self.doc_number}-{self.grant_date:%Y%m%d}"

    @property
    def patent_id(self) -> str:
        return f"US{self.doc_number}{self.kind}"

    @property
    def figures(self) -> list[FigurePlan]:
        return [figure for sheet in self.sheets for figure in sheet.figures]

    def sheet_file(self, sheet: SheetPlan) -> str:
        return f"{self.stem}-D{sheet.num:05d}.TIF"


@dataclass
class ReleasePlan:
    release_date: date
    patents: list[PatentPlan]

    @property
    def name(self) -> str:
        return f"I{self.release_date:%Y%m%d}"


FIRST_NAMES = (
    "Maria",
    "James",
    "Wei",
    "Aiko",
    "Carlos",
    "Ingrid",
    "Ravi",
    "Olga",
    "Samuel",
    "Fatima",
    "Lukas",
    "Grace",
)
LAST_NAMES = (
    "Nguyen",
    "Schmidt",
    "Okafor",
    "Tanaka",
    "Rossi",
    "Kowalski",
    "Patel",
    "Larsen",
    "Moreau",
    "Silva",
    "Chen",
    "Brooks",
)
CITIES = ("Austin", "Dayton", "Osaka", "Munich", "Lyon", "Denver", "Pune", "Malmo", "Porto", "Boise")
LETTERS = "ABCDEFGH"


def _figure_groups(rng: np.random.Generator, count: int, style: str) -> list[list[str]]:
    """Split `count` figures into numbered groups and give each its label key ("3", "3A", "7(a)")."""
    if style == "plain":
        return [[str(number)] for number in range(1, count + 1)]
    sizes: list[int] = []
    left = count
    while left:
        size = int(min(left, rng.choice([1, 2, 2, 3, 4])))
        sizes.append(size)
        left -= size
    groups = []
    for number, size in enumerate(sizes, start=1):
        if size == 1:
            groups.append([str(number)])
        elif style == "letter":
            groups.append([f"{number}{LETTERS[i]}" for i in range(size)])
        else:
            groups.append([f"{number}({LETTERS[i].lower()})" for i in range(size)])
    return groups


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _group_figref(keys: list[str], rng: np.random.Generator) -> tuple[str, str]:
    """The figref markup for a group and its verb: ("[[FIG. 1]]", "is"), ("[[FIGS. 3A-3D]]", "are")."""
    if len(keys) == 1:
        return f"[[FIG. {keys[0]}]]", "is"
    if "(" in keys[0]:
        joiner = " to " if len(keys) > 2 else " and "
        return f"[[FIG. {keys[0]}]]{joiner}[[FIG. {keys[-1]}]]", "are"
    if len(keys) == 2:
        return f"[[FIGS. {keys[0]} and {keys[1]}]]", "are"
    if rng.random() < 0.5:
        return f"[[FIGS. {keys[0]}-{keys[-1]}]]", "are"
    return f"[[FIGS. {keys[0]}-{keys[-1][-1]}]]", "are"  # "FIGS. 2A-C": ranges must be expanded


def plan_patent(
    rng: np.random.Generator, config: SyntheticConfig, doc_number: str, design: bool, grant: date
) -> PatentPlan:
    object_class = CLASSES[int(rng.choice(len(CLASSES), p=CLASS_WEIGHTS))]
    noun = object_class.name
    object_seed = int(rng.integers(0, 2**31))
    parts = [part.name for part in object_class.build(np.random.default_rng(object_seed))]
    base = int(rng.choice([10, 20, 100]))
    step = 2 if base < 100 or rng.random() < 0.5 else 10
    part_numerals = {name: base + step * (i + 1) for i, name in enumerate(parts)}

    # Sheets, and how many FIGs each holds.
    n_sheets = (
        1
        if rng.random() < 0.1
        else int(rng.integers(min(2, config.max_sheets_per_patent), config.max_sheets_per_patent + 1))
    )
    two_share = 0.15 if design else config.two_figure_share
    per_sheet = [2 if n_sheets > 1 and rng.random() < two_share else 1 for _ in range(n_sheets)]
    landscape = [(not design and rng.random() < config.landscape_share) for _ in range(n_sheets)]
    n_figures = sum(per_sheet)
    sole = n_figures == 1
    style = (
        "plain"
        if design or n_figures < 3
        else str(rng.choice(["plain", "letter", "paren"], p=[0.4, 0.4, 0.2]))
    )
    groups = _figure_groups(rng, n_figures, style)
    keys = [key for group in groups for key in group]
    label_prefix = "Fig." if rng.random() < 0.2 else "FIG."
    views = list(VIEW_ORDER[: max(n_figures, 1)])
    while len(views) < n_figures:
        views.append(VIEW_ORDER[len(views) % len(VIEW_ORDER)])

    figures: list[FigurePlan] = []
    for key, view in zip(keys, views, strict=False):
        shown = [part_numerals[name] for name in parts]
        if not design and view != "perspective":
            shown = sorted(
                rng.choice(shown, size=min(len(shown), int(rng.integers(2, 4))), replace=False).tolist()
            )
        label = "" if sole else f"{label_prefix} {key}"
        figures.append(FigurePlan(label, "" if sole else key, view, [] if design else shown))
    sheets, cursor = [], 0
    for num, (count, is_landscape) in enumerate(zip(per_sheet, landscape, strict=True), start=1):
        sheets.append(SheetPlan(num, figures[cursor : cursor + count], is_landscape))
        cursor += count

    title = str(rng.choice(object_class.design_titles if design else object_class.utility_titles))
    article = "an" if noun[0] in "aeiou" else "a"
    view_words = {figure.key: VIEWS[figure.view][1] for figure in figures}

    # Brief description of drawings: one paragraph per FIG group, real phrasings.
    brief: list[str] = []
    if sole:
        what = VIEWS[figures[0].view][1]
        brief.append(
            f"The FIGURE is a {what} of {article} {noun} showing our new design."
            if design
            else f"The FIGURE is a {what} of {article} {noun} **{base}** according to an embodiment."
        )
    elif design:
        for i, key in enumerate(keys):
            end = "." if i == len(keys) - 1 else ("; and" if i == len(keys) - 2 else ";")
            if i == 0:
                brief.append(
                    f"[[FIG. {key}]] is a {view_words[key]} of {article} {noun} showing our new design{end}"
                )
            else:
                brief.append(f"[[FIG. {key}]] is a {view_words[key]} thereof{end}")
        if rng.random() < 0.5:
            brief.append(
                f"The broken lines show portions of the {noun} that form no part of the claimed design."
            )
    else:
        if rng.random() < 0.5:
            brief.append(
                "The accompanying drawings, which are incorporated in and constitute a part of this specification, illustrate embodiments of the disclosure."
            )
        for i, group in enumerate(groups):
            figref, verb = _group_figref(group, rng)
            words = [view_words[key].removesuffix(" view") for key in group]
            if len(group) == 1:
                what = f"{'a' if words[0][0] not in 'aeiou' else 'an'} {words[0]} view"
            else:
                what = f"{_join_words(words)} views, respectively,"
            subject = (
                f"{article} {noun} **{base}** according to an embodiment of the present disclosure"
                if i == 0
                else str(
                    rng.choice(
                        [
                            f"the {noun} of [[FIG. {keys[0]}]]",
                            f"the {noun} **{base}**",
                            f"the {noun} shown in [[FIG. {keys[0]}]]",
                        ]
                    )
                )
            )
            brief.append(f"{figref} {verb} {what} of {subject};")
        brief[-1] = brief[-1].rstrip(";") + "."

    # Detailed description (utility only; real design grants have none).
    detailed: list[str] = []
    summary: list[str] = []
    abstract = ""
    claims: list[str] = []

    def with_article(name: str) -> str:
        return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"

    parts_text = _join_words([f"{with_article(n)} **{part_numerals[n]}**" for n in parts])
    if design:
        title_article = "an" if title[0].lower() in "aeiou" else "a"
        claims = [f"The ornamental design for {title_article} {title.lower()}, as shown and described."]
    else:
        first = "the FIGURE" if sole else f"[[FIG. {keys[0]}]]"
        detailed.append(
            f"Referring to {first}, {article} {noun} **{base}** according to an embodiment includes {parts_text}. "
            f"The {noun} **{base}** {object_class.purpose}."
        )
        for figure in figures[1:]:
            names = [n for n in parts if part_numerals[n] in figure.numerals] or parts[:2]
            pool = names if len(names) >= 2 else list(dict.fromkeys(names + parts))[:2]
            a, b = rng.choice(pool, size=2, replace=False).tolist()
            relation = str(rng.choice(object_class.relations)).format(
                a=f"{a} **{part_numerals[a]}**", b=f"{b} **{part_numerals[b]}**"
            )
            opener = str(
                rng.choice(["As shown in", "Referring to", "In the embodiment of", "With reference to"])
            )
            view = VIEWS[figure.view][1]
            detailed.append(f"{opener} [[FIG. {figure.key}]], which is a {view}, {relation}.")
        detailed.append(
            f"While the {noun} **{base}** has been described with reference to particular embodiments, "
            "changes in form and detail may be made without departing from the scope of the claims."
        )
        summary = [
            f"Known {noun}s are heavy and costly to make. There is a need for a simpler {noun}.",
            f"A {noun} is provided that includes {_join_words([with_article(n) for n in parts])}. "
            f"The {noun} {object_class.purpose}.",
        ]
        abstract = (
            f"{article.capitalize()} {noun} includes {_join_words([with_article(n) for n in parts])}. "
            f"The {noun} {object_class.purpose}."
        )
        elements = [f"{with_article(n)};" for n in parts[:-1]] + [f"and {with_article(parts[-1])}."]
        claims.append(f"1. {article.capitalize()} {noun}, comprising:|" + "|".join(elements))
        for number, relation in enumerate(object_class.relations[:2], start=2):
            text = relation.format(a=parts[number - 1], b=parts[0])
            claims.append(f"{number}. The {noun} of claim 1, wherein {text}.")

    application_date = grant - timedelta(days=int(rng.integers(420, 1600)))
    series = "29" if design else str(rng.choice(["17", "18"]))
    inventors = [
        (str(rng.choice(FIRST_NAMES)), str(rng.choice(LAST_NAMES)), str(rng.choice(CITIES)))
        for _ in range(int(rng.integers(1, 4)))
    ]
    return PatentPlan(
        doc_number=doc_number,
        kind="S1" if design else ("B2" if rng.random() < 0.8 else "B1"),
        application_type="design" if design else "utility",
        object_class=object_class,
        object_seed=object_seed,
        title=title,
        application_number=f"{series}{int(rng.integers(100000, 999999)):06d}",
        application_date=application_date,
        grant_date=grant,
        sheets=sheets,
        brief_paragraphs=brief,
        detailed_paragraphs=detailed,
        summary_paragraphs=summary,
        abstract=abstract,
        claims=claims,
        part_numerals=part_numerals,
        label_prefix=label_prefix,
        inventors=inventors,
    )


def release_dates(config: SyntheticConfig) -> list[date]:
    # Releases are weekly, on the weekday of `start` (USPTO: Tuesdays).
    return [config.start + timedelta(weeks=index) for index in range(config.releases)]


def plan_release(config: SyntheticConfig, index: int) -> ReleasePlan:
    """Everything about release `index` but the pixels: a pure function of (seed, index)."""
    grant = config.start + timedelta(weeks=index)
    rng = np.random.default_rng([config.seed, index, 7919])
    designs = [bool(rng.random() < config.design_share) for _ in range(config.patents_per_release)]
    utility_number = 11_856_001 + index * 6_500
    design_number = 1_010_001 + index * 450
    patents = []
    for position, design in enumerate(designs):
        patent_rng = np.random.default_rng([config.seed, index, position])
        if design:
            doc_number, design_number = f"D{design_number:07d}", design_number + 1
        else:
            doc_number, utility_number = f"{utility_number}", utility_number + 1
        patents.append(plan_patent(patent_rng, config, doc_number, design, grant))
    return ReleasePlan(grant, patents)


# --------------------------------------------------------------------------------------------
# Rendering a sheet.
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 ships a scalable TrueType default font: no system font needed.
    return ImageFont.load_default(size=size)


def _project(parts: list[Part], view: str) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """Per part: its projected 2-D polylines (image y grows downwards) and its vertices."""
    rotation = VIEWS[view][0]
    view_dir = rotation.T @ np.array([0.0, 1.0, 0.0])  # the camera looks along +y after rotating
    lines, vertices = [], []
    for part in parts:
        part_lines = []
        for solid in part.solids:
            for line in solid.polylines(view_dir):
                rotated = line @ rotation.T
                part_lines.append(np.column_stack([rotated[:, 0], -rotated[:, 2]]))
        rotated = np.vstack([solid.vertices for solid in part.solids]) @ rotation.T
        lines.append(part_lines)
        vertices.append(np.column_stack([rotated[:, 0], -rotated[:, 2]]))
    return lines, vertices


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    region: tuple[int, int, int, int],
    parts: list[Part],
    figure: FigurePlan,
    part_numerals: dict[str, int],
    rng: np.random.Generator,
    unit: int,
) -> None:
    x0, y0, x1, y1 = region
    label_font, numeral_font = _font(int(unit * 1.5)), _font(unit)
    line_width = max(2, unit // 10)
    label_space = int(unit * 2.6) if figure.label else 0
    margin = int(unit * 2.8) if figure.numerals else int(unit * 0.8)
    art = (x0 + margin, y0 + margin, x1 - margin, y1 - margin - label_space)
    lines, vertices = _project(parts, figure.view)
    every = np.vstack(vertices)
    low, high = every.min(axis=0), every.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    scale = min((art[2] - art[0]) / span[0], (art[3] - art[1]) / span[1]) * rng.uniform(0.8, 1.0)
    center = np.array([(art[0] + art[2]) / 2, (art[1] + art[3]) / 2])
    mid = (low + high) / 2

    def to_pixels(points: np.ndarray) -> np.ndarray:
        return (points - mid) * scale + center

    for part_lines in lines:
        for line in part_lines:
            draw.line([tuple(p) for p in to_pixels(line).round(1)], fill=0, width=line_width, joint="curve")

    # Reference numerals with leader lines, pointing outwards from the object's centre.
    placed: list[np.ndarray] = []
    for numeral in figure.numerals:
        index = list(part_numerals.values()).index(numeral)
        points = to_pixels(vertices[index])
        anchor = points[np.argmax(np.linalg.norm(points - center, axis=1) + rng.uniform(0, 5, len(points)))]
        anchor = anchor + (to_pixels(vertices[index].mean(axis=0, keepdims=True))[0] - anchor) * 0.1
        direction = anchor - center
        direction = direction / (np.linalg.norm(direction) or 1.0)
        text = str(numeral)
        box_w, box_h = draw.textbbox((0, 0), text, font=numeral_font)[2:]
        for turn in (0.0, 0.5, -0.5, 1.0, -1.0, 1.6, -1.6, 2.4):
            c, s = np.cos(turn), np.sin(turn)
            d = np.array([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
            spot = anchor + d * unit * 2.2
            spot = np.clip(
                spot,
                [x0 + box_w / 2 + 2, y0 + box_h / 2 + 2],
                [x1 - box_w / 2 - 2, y1 - label_space - box_h / 2 - 2],
            )
            if all(np.linalg.norm(spot - other) > unit * 1.6 for other in placed):
                break
        placed.append(spot)
        draw.text(tuple(spot), text, fill=0, font=numeral_font, anchor="mm")
        start = spot + (anchor - spot) * min(1.0, (unit * 0.8) / (np.linalg.norm(anchor - spot) or 1.0))
        draw.line([tuple(start), tuple(anchor)], fill=0, width=max(1, line_width - 1))
    if figure.label:
        draw.text(((x0 + x1) / 2, y1 - label_space / 2), figure.label, fill=0, font=label_font, anchor="mm")


def render_sheet(patent: PatentPlan, sheet: SheetPlan, config: SyntheticConfig) -> Image.Image:
    """A 1-bit drawing sheet; a landscape sheet is drawn wide, then stored as portrait pixels."""
    width, height = config.sheet_width, config.sheet_height
    canvas_size = (height, width) if sheet.landscape else (width, height)
    canvas = Image.new("L", canvas_size, 255)
    draw = ImageDraw.Draw(canvas)
    rng = np.random.default_rng([patent.object_seed, sheet.num])
    parts = patent.object_class.build(np.random.default_rng(patent.object_seed))
    unit = max(12, round(min(width, height) / 32))  # numeral height; the FIG label is 1.5x
    edge = int(unit * 1.5)
    w, h = canvas_size
    count = len(sheet.figures)
    for i, figure in enumerate(sheet.figures):
        if w > h:  # side by side on a wide canvas, stacked on a tall one
            region = (
                edge + i * (w - 2 * edge) // count,
                edge,
                edge + (i + 1) * (w - 2 * edge) // count,
                h - edge,
            )
        else:
            region = (
                edge,
                edge + i * (h - 2 * edge) // count,
                w - edge,
                edge + (i + 1) * (h - 2 * edge) // count,
            )
        _draw_figure(draw, region, parts, figure, patent.part_numerals, rng, unit)
    bilevel = canvas.point(lambda value: 255 if value >= 128 else 0).convert("1", dither=Image.Dither.NONE)
    if sheet.landscape:
        # 37 CFR 1.84(i): a landscape view sits with its top at the right-hand side of the sheet.
        bilevel = bilevel.transpose(Image.Transpose.ROTATE_270)
    return bilevel


def tiff_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", compression="group4", dpi=(DPI, DPI))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The XML document.
# --------------------------------------------------------------------------------------------

MARKUP = re.compile(r"\[\[(.+?)\]\]|\*\*(.+?)\*\*")


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attributes: str) -> etree._Element:
    """A child element on its own line, as USPTO writes structural elements."""
    element = etree.SubElement(parent, tag, {k.replace("_", "-"): v for k, v in attributes.items()})
    element.text = text
    element.tail = "\n"
    if parent.text is None and len(parent) == 1:
        parent.text = "\n"
    return element


def _mixed(element: etree._Element, marked: str) -> None:
    """Fill `element` with text where [[FIG. 1]] becomes a <figref> and **10** a <b>."""
    position, last = 0, None
    for match in MARKUP.finditer(marked):
        text = marked[position : match.start()]
        if last is None:
            element.text = (element.text or "") + text
        else:
            last.tail = (last.tail or "") + text
        if match.group(1) is not None:
            last = etree.SubElement(element, "figref", {"idref": "DRAWINGS"})
            last.text = match.group(1)
        else:
            last = etree.SubElement(element, "b")
            last.text = match.group(2)
        position = match.end()
    rest = marked[position:]
    if last is None:
        element.text = (element.text or "") + rest
    else:
        last.tail = (last.tail or "") + rest


def plain_text(marked: str) -> str:
    """A marked-up paragraph as the parser should read it: the text without the markup."""
    return MARKUP.sub(lambda m: m.group(1) or m.group(2), marked)


def _document_id(parent: etree._Element, number: str, kind: str | None, day: date) -> None:
    document_id = _sub(parent, "document-id")
    _sub(document_id, "country", "US")
    _sub(document_id, "doc-number", number)
    if kind:
        _sub(document_id, "kind", kind)
    _sub(document_id, "date", f"{day:%Y%m%d}")


def _classification(parent: etree._Element, tag: str, cpc: tuple[str, ...], day: date, position: str) -> None:
    section, klass, subclass, group, subgroup = cpc
    element = _sub(parent, tag)
    version = "cpc-version-indicator" if tag == "classification-cpc" else "ipc-version-indicator"
    _sub(_sub(element, version), "date", "20130101")
    if tag == "classification-ipcr":
        _sub(element, "classification-level", "A")
    for name, value in (
        ("section", section),
        ("class", klass),
        ("subclass", subclass),
        ("main-group", group),
        ("subgroup", subgroup),
    ):
        _sub(element, name, value)
    _sub(element, "symbol-position", position)
    _sub(element, "classification-value", "I")
    _sub(_sub(element, "action-date"), "date", f"{day:%Y%m%d}")
    _sub(_sub(element, "generating-office"), "country", "US")
    _sub(element, "classification-status", "B")
    _sub(element, "classification-data-source", "H")
    if tag == "classification-cpc":
        _sub(element, "scheme-origination-code", "C")


def build_xml(patent: PatentPlan, sheet_sizes: dict[int, tuple[int, int]]) -> bytes:
    """The `us-patent-grant` document (DTD v4.5), serialised by lxml so escaping is right."""
    grant = patent.grant_date
    root = etree.Element(
        "us-patent-grant",
        {
            "lang": "EN",
            "dtd-version": DTD_VERSION,
            "file": f"{patent.stem}.XML",
            "status": "PRODUCTION",
            "id": "us-patent-grant",
            "country": "US",
            "date-produced": f"{grant - timedelta(days=14):%Y%m%d}",
            "date-publ": f"{grant:%Y%m%d}",
        },
    )
    # Marks the document as ours, so that models can be judged on real drawings apart from these.
    root.append(etree.ProcessingInstruction("patentflow", 'synthetic="yes"'))
    root[-1].tail = "\n"
    root.text = "\n"
    biblio = _sub(root, "us-bibliographic-data-grant")
    _document_id(_sub(biblio, "publication-reference"), patent.doc_number, patent.kind, grant)
    _document_id(
        _sub(biblio, "application-reference", appl_type=patent.application_type),
        patent.application_number,
        None,
        patent.application_date,
    )
    _sub(biblio, "us-application-series-code", patent.application_number[:2])
    term = _sub(biblio, "us-term-of-grant")
    object_class = patent.object_class
    if patent.application_type == "design":
        _sub(term, "length-of-grant", "15")
        locarno = _sub(biblio, "classification-locarno")
        _sub(locarno, "edition", "14")
        _sub(locarno, "main-classification", object_class.locarno)
        national = _sub(biblio, "classification-national")
        _sub(national, "country", "US")
        _sub(
            national,
            "main-classification",
            f"D{int(object_class.locarno[:2])} {int(object_class.locarno[2:]) * 7 + 100}",
        )
    else:
        _sub(term, "us-term-extension", str(len(patent.doc_number) * 37))
        ipcr = _sub(biblio, "classifications-ipcr")
        _classification(ipcr, "classification-ipcr", object_class.cpc, grant, "F")
        cpcs = _sub(biblio, "classifications-cpc")
        _classification(_sub(cpcs, "main-cpc"), "classification-cpc", object_class.cpc, grant, "F")
    _sub(biblio, "invention-title", patent.title, id="d2e53")
    _sub(biblio, "number-of-claims", str(len(patent.claims)))
    _sub(biblio, "us-exemplary-claim", "1")
    figures = _sub(biblio, "figures")
    _sub(figures, "number-of-drawing-sheets", str(len(patent.sheets)))
    _sub(figures, "number-of-figures", str(len(patent.figures)))
    parties = _sub(biblio, "us-parties")
    inventors = _sub(parties, "inventors")
    for sequence, (first, last, city) in enumerate(patent.inventors, start=1):
        book = _sub(
            _sub(inventors, "inventor", sequence=f"{sequence:03d}", designation="us-only"), "addressbook"
        )
        _sub(book, "last-name", last)
        _sub(book, "first-name", first)
        address = _sub(book, "address")
        _sub(address, "city", city)
        _sub(address, "country", "US")

    if patent.abstract:
        abstract = _sub(root, "abstract", id="abstract")
        _sub(abstract, "p", patent.abstract, id="p-0001", num="0000")

    drawings = _sub(root, "drawings", id="DRAWINGS")
    for sheet in patent.sheets:
        width, height = sheet_sizes[sheet.num]
        figure = _sub(drawings, "figure", id=f"Fig-EMI-D{sheet.num:05d}", num=f"{sheet.num:05d}")
        attributes = {
            "id": f"EMI-D{sheet.num:05d}",
            "he": f"{height / DPI * 25.4:.2f}mm",
            "wi": f"{width / DPI * 25.4:.2f}mm",
        }
        if sheet.landscape:
            attributes["orientation"] = "landscape"
        attributes |= {
            "file": patent.sheet_file(sheet),
            "alt": "embedded image",
            "img-content": "drawing",
            "img-format": "tif",
        }
        _sub(figure, "img", **{k.replace("-", "_"): v for k, v in attributes.items()})

    description = _sub(root, "description", id="description")
    counter = iter(range(1, 10_000))  # num counts description paragraphs; id also counts the abstract's
    heading_counter = iter(range(1, 1000))

    def paragraph(parent: etree._Element, marked: str) -> None:
        number = next(counter)
        element = _sub(parent, "p", id=f"p-{number + bool(patent.abstract):04d}", num=f"{number:04d}")
        _mixed(element, marked)

    def heading(parent: etree._Element, text: str) -> None:
        _sub(parent, "heading", text, id=f"h-{next(heading_counter):04d}", level="1")

    def instruction(target: str, label: str, end: str) -> None:
        pi = etree.ProcessingInstruction(target, f'description="{label}" end="{end}"')
        pi.tail = "\n"
        if description.text is None and len(description) == 0:
            description.text = "\n"
        description.append(pi)

    if patent.summary_paragraphs:
        instruction("BRFSUM", "Brief Summary", "lead")
        heading(description, "BACKGROUND")
        paragraph(description, patent.summary_paragraphs[0])
        heading(description, "SUMMARY")
        for text in patent.summary_paragraphs[1:]:
            paragraph(description, text)
        instruction("BRFSUM", "Brief Summary", "tail")
    instruction("brief-description-of-drawings", "Brief Description of Drawings", "lead")
    drawings_text = _sub(description, "description-of-drawings")
    if patent.application_type != "design":
        heading(drawings_text, "BRIEF DESCRIPTION OF THE DRAWINGS")
    for text in patent.brief_paragraphs:
        paragraph(drawings_text, text)
    instruction("brief-description-of-drawings", "Brief Description of Drawings", "tail")
    if patent.detailed_paragraphs:
        instruction("DETDESC", "Detailed Description", "lead")
        heading(description, "DETAILED DESCRIPTION")
        for text in patent.detailed_paragraphs:
            paragraph(description, text)
        instruction("DETDESC", "Detailed Description", "tail")

    _sub(
        root, "us-claim-statement", "CLAIM" if patent.application_type == "design" else "What is claimed is:"
    )
    claims = _sub(root, "claims", id="claims")
    for number, text in enumerate(patent.claims, start=1):
        claim = _sub(claims, "claim", id=f"CLM-{number:05d}", num=f"{number:05d}")
        head, *elements = text.split("|")
        claim_text = _sub(claim, "claim-text")
        if " of claim 1" in head:
            before, after = head.split("claim 1", 1)
            claim_text.text = before
            reference = etree.SubElement(claim_text, "claim-ref", idref="CLM-00001")
            reference.text = "claim 1"
            reference.tail = after
        else:
            claim_text.text = head
        for element_text in elements:
            _sub(claim_text, "claim-text", element_text)
    # Written by hand: lxml's own declaration uses single quotes, USPTO's double quotes.
    body = etree.tostring(root.getroottree(), encoding="UTF-8", xml_declaration=False, doctype=DTD_DOCTYPE)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


# --------------------------------------------------------------------------------------------
# Packing: per-patent ZIPs inside the weekly tar, with fixed timestamps (same seed, same bytes).
# --------------------------------------------------------------------------------------------


def patent_zip(patent: PatentPlan, config: SyntheticConfig) -> bytes:
    images = {sheet.num: render_sheet(patent, sheet, config) for sheet in patent.sheets}
    stamp = (patent.grant_date.year, patent.grant_date.month, patent.grant_date.day, 0, 0, 0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:

        def add(name: str, data: bytes, compress: int) -> None:
            info = zipfile.ZipInfo(f"{patent.stem}/{name}", date_time=stamp)
            info.compress_type = compress
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)

        add(
            f"{patent.stem}.XML",
            build_xml(patent, {num: image.size for num, image in images.items()}),
            zipfile.ZIP_DEFLATED,
        )
        for sheet in patent.sheets:
            add(
                patent.sheet_file(sheet), tiff_bytes(images[sheet.num]), zipfile.ZIP_STORED
            )  # G4 is compressed already
    return buffer.getvalue()


def member_path(release: ReleasePlan, patent: PatentPlan, index: int) -> str:
    folder = "DESIGN" if patent.application_type == "design" else f"UTIL{index // 1000:04d}"
    return f"{release.name}/{folder}/{patent.stem}.ZIP"


def write_release(release: ReleasePlan, out_dir: Path, config: SyntheticConfig) -> Path:
    """Render and pack one release as `<out_dir>/I<yyyymmdd>.tar`, atomically."""
    target = Path(out_dir) / f"{release.name}.tar"
    mtime = datetime.combine(release.release_date, time(0, 0), tzinfo=UTC).timestamp()
    ordered = sorted(release.patents, key=lambda p: (p.application_type == "design", p.doc_number))
    with (
        atomic_write(target, "wb") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        utility_index = 0
        for patent in ordered:
            data = patent_zip(patent, config)
            info = tarfile.TarInfo(member_path(release, patent, utility_index))
            utility_index += patent.application_type != "design"
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return target


def ground_truth(releases: Sequence[ReleasePlan]) -> dict[str, Any]:
    """Which FIG labels are printed on which sheet, in shared/realdata's sheet_figure_labels.json shape."""
    patents = []
    for release in releases:
        for patent in release.patents:
            patents.append(
                {
                    "release": release.name,
                    "patent_dir": patent.stem,
                    "publication": patent.patent_id,
                    "title": patent.title,
                    "object_class": patent.object_class.name,
                    "number_of_drawing_sheets": len(patent.sheets),
                    "number_of_figures": len(patent.figures),
                    "description_of_drawings": [plain_text(text) for text in patent.brief_paragraphs],
                    "sheets": [
                        {
                            "sheet": f"D{sheet.num:05d}",
                            "file": f"{patent.stem}/{patent.sheet_file(sheet)}",
                            "landscape": sheet.landscape,
                            "figures_on_sheet": [figure.key for figure in sheet.figures if figure.key],
                            "printed_labels": [figure.label for figure in sheet.figures if figure.label],
                            "views": [figure.view for figure in sheet.figures],
                        }
                        for sheet in patent.sheets
                    ],
                }
            )
    return {
        "_note": "Synthetic releases (patent_assets.synthetic): the exact FIG labels printed per sheet.",
        "patents": patents,
    }


def generate(config: SyntheticConfig, out_dir: Path, truth_path: Path | None = None) -> list[Path]:
    """Write every release of `config` into `out_dir`; optionally the ground truth as JSON."""
    plans = [plan_release(config, index) for index in range(config.releases)]
    paths = [write_release(plan, out_dir, config) for plan in plans]
    if truth_path is not None:
        with atomic_write(Path(truth_path)) as handle:
            json.dump(ground_truth(plans), handle, indent=1)
    return paths


def generate_releases(
    out_dir: Path,
    seed: int = 0,
    releases: int = 3,
    patents_per_release: int = 8,
    start: date = date(2024, 1, 2),
) -> list[Path]:
    """One weekly product per release, a week apart from `start`; returns the tar paths."""
    config = SyntheticConfig(
        releases=releases, patents_per_release=patents_per_release, start=start, seed=seed
    )
    return generate(config, out_dir)


def generate_default(out_dir: Path) -> list[Path]:
    """The project's default data: the default `SyntheticConfig`."""
    return generate(SyntheticConfig(), out_dir)
