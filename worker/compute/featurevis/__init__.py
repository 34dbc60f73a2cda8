"""Feature visualization in the spirit of Lucid: parameterizations (`param`), composable transforms
(`transform`), composable objectives (`objectives`), the optimisation loop (`render`), facet probes
(`facets`) and the worker stage that stores the images (`stage`).

Everything is batched over images: image i of a batch optimises its own objective term and draws its
own random numbers from its own seed, so a batch of B neurons gives the same images as B single runs
(up to float rounding) and a seed reproduces an image bit for bit on the CPU.
"""
