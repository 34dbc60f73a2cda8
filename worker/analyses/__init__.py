"""What each stage computes and writes: the bodies the declarations in worker/stages/ call."""
