"""Rendering what nerfstudio cannot: meshes along camera paths, camera-path previews, showcase videos."""
