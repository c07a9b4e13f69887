"""Object classes: geometry builders and the words that go with them.

World axes: x to the right, y away from the viewer (depth), z up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from patent_assets.synthetic.geometry import Part, Solid, box, circle, cylinder, prism, rot_y, rot_z


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
