"""CLIP Microscope web app and store. Importable without torch or open_clip."""
