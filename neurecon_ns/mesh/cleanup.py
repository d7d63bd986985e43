"""Making an extracted mesh lighter and cleaner: quadric decimation, removal of small components (floaters),
filling of small holes. Each step returns the new mesh and a one-line account of what it changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import trimesh
from jaxtyping import Float, Int
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurecon_ns.mesh.postprocess import submesh


@dataclass
class StepReport:
    """What one cleanup step did, for the command's output."""

    step: str
    faces_before: int
    faces_after: int
    detail: str

    def line(self) -> str:
        return f"{self.step}: {self.faces_before:,} -> {self.faces_after:,} faces ({self.detail})"


def face_components(mesh: trimesh.Trimesh) -> Int[np.ndarray, " num_faces"]:
    """Connected component of each face (faces joined through shared vertices)."""
    edges = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]]])
    ones = np.ones(len(edges), dtype=np.int8)
    adjacency = coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(len(mesh.vertices),) * 2)
    _, vertex_component = connected_components(adjacency, directed=False)
    return vertex_component[mesh.faces[:, 0]]


def remove_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> Tuple[trimesh.Trimesh, StepReport]:
    """Drop every connected component with fewer faces than `min_fraction` times the largest one's: floaters
    and islands left by marching cubes in empty space, while parts of similar size stay."""
    if len(mesh.faces) == 0:
        return mesh.copy(), StepReport("small components", 0, 0, "empty mesh")
    component = face_components(mesh)
    faces_per_component = np.bincount(component)
    kept_components = faces_per_component >= min_fraction * faces_per_component.max()
    result = submesh(mesh, kept_components[component])
    removed = int((~kept_components).sum())
    detail = f"removed {removed} of {len(faces_per_component)} components smaller than {min_fraction:g} of the largest"
    return result, StepReport("small components", len(mesh.faces), len(result.faces), detail)


def non_manifold_edge_count(faces: Int[np.ndarray, "num_faces 3"]) -> int:
    """Edges shared by more than two faces."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts > 2).sum())


def simplify(mesh: trimesh.Trimesh, target_faces: int, aggressiveness: float = 7.0) -> Tuple[trimesh.Trimesh, StepReport]:
    """Quadric edge-collapse decimation to about `target_faces` faces (fast-simplification, the Fast Quadric
    Mesh Simplification algorithm): each collapse moves the merged vertex to the point of least squared
    distance to the planes of the faces around it, and collapses that would flip a face are refused.

    Unused vertices and faces that became degenerate are dropped. Vertex colours are not carried over: colour
    the simplified mesh afterwards (`neurecon mesh` does).
    """
    import fast_simplification

    if len(mesh.faces) <= target_faces:
        return mesh.copy(), StepReport("simplify", len(mesh.faces), len(mesh.faces), "already at or below the target")
    vertices, faces = fast_simplification.simplify(
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int32),
        target_count=int(target_faces),
        agg=aggressiveness,
    )
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    result = trimesh.Trimesh(vertices, faces, process=False)
    result.remove_unreferenced_vertices()
    result.metadata.update(mesh.metadata)
    detail = f"quadric decimation, {non_manifold_edge_count(result.faces)} non-manifold edges"
    return result, StepReport("simplify", len(mesh.faces), len(result.faces), detail)


def boundary_loops(faces: Int[np.ndarray, "num_faces 3"]) -> List[Int[np.ndarray, " loop_length"]]:
    """Closed loops of boundary edges (edges used by one face), each as its vertices in order.

    A boundary edge runs `a -> b` in its face's winding; following `b -> c -> ...` walks the hole. Where a
    vertex starts two boundary edges (two holes touching at a vertex) the walk takes either, which still
    gives closed loops.
    """
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    boundary = directed[counts[inverse.reshape(-1)] == 1]
    next_vertex = {}
    for start, end in boundary:
        next_vertex.setdefault(int(start), []).append(int(end))
    loops = []
    while next_vertex:
        first = next(iter(next_vertex))
        loop = [first]
        current = first
        while True:
            ends = next_vertex.get(current)
            if not ends:
                break
            following = ends.pop()
            if not ends:
                del next_vertex[current]
            if following == first:
                loops.append(np.asarray(loop, dtype=np.int64))
                break
            loop.append(following)
            current = following
    return loops


def fill_holes(mesh: trimesh.Trimesh, max_hole_edges: int) -> Tuple[trimesh.Trimesh, StepReport]:
    """Close every boundary loop of at most `max_hole_edges` edges with a fan of triangles around a new vertex
    at the loop's centroid, wound so that the new faces keep the mesh's orientation.

    Loops longer than that stay open: the border of a mesh culled by the cameras, or of an open scene, is a
    hole too large to close. Vertex colours of the new vertices are the loop's mean colour.
    """
    loops = [loop for loop in boundary_loops(np.asarray(mesh.faces)) if len(loop) <= max_hole_edges]
    if not loops:
        return mesh.copy(), StepReport("fill holes", len(mesh.faces), len(mesh.faces), f"no hole of at most {max_hole_edges} edges")
    vertices = np.asarray(mesh.vertices)
    new_vertices: List[Float[np.ndarray, "3"]] = []
    new_faces = []
    for loop in loops:
        center = len(vertices) + len(new_vertices)
        new_vertices.append(vertices[loop].mean(axis=0))
        # the loop runs along its faces' winding; the cap runs against it
        new_faces.append(np.stack([np.roll(loop, -1), loop, np.full(len(loop), center)], axis=1))
    colors = None
    if mesh.visual.kind == "vertex":
        old_colors = np.asarray(mesh.visual.vertex_colors)
        loop_colors = np.stack([old_colors[loop].mean(axis=0) for loop in loops]).round().astype(np.uint8)
        colors = np.concatenate([old_colors, loop_colors])
    result = trimesh.Trimesh(
        np.concatenate([vertices, np.asarray(new_vertices)]),
        np.concatenate([np.asarray(mesh.faces), *new_faces]),
        vertex_colors=colors,
        process=False,
    )
    result.metadata.update(mesh.metadata)
    detail = f"closed {len(loops)} holes of at most {max_hole_edges} edges"
    return result, StepReport("fill holes", len(mesh.faces), len(result.faces), detail)
