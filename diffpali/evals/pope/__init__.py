"""POPE (Li et al. 2023): object hallucination measured with balanced yes/no object probes.

``sources`` lists labelled images (easy-vqa embedded, or COCO 2014 val instances), ``probes``
builds and caches the present/absent questions in the random, popular and adversarial settings,
``scoring`` parses replies and computes the five metrics (one scorer for every model) and
``task`` ties them to ``evaluate.py eval=pope``.
"""
