"""The `microscope` command tree: root.py registers every group; the web app never imports it."""
