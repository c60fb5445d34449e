"""Where and how code runs.

:mod:`.devices` (device, precision, threads, loader defaults), :mod:`.allocator`,
:mod:`.resources` (the resource monitor) and :mod:`.capacity` (training cost, counted).
"""
