"""3-D geometry: solids as rings of vertices, projected orthographically.

World axes: x to the right, y away from the viewer (depth), z up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
