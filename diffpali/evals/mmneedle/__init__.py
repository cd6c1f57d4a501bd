"""MMNeedle: find the sub-image that matches a caption in a haystack of stitched image grids.

``sources`` lists captioned images, ``haystack`` builds, renders and caches the samples,
``answers`` parses free-form replies, ``scoring`` scores them (one scorer for every model),
``plots`` draws the per-cell heatmap and ``task`` ties them to ``evaluate.py eval=mmneedle``.
"""
