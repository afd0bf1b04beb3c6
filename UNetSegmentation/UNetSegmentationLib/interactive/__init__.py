"""Interactive refinement (issue 26): clicks and scribbles as guidance of a class-agnostic network
(guidance.py), simulated users for training and measuring it (simulation.py), the trained network
(predictor.py), and the session that applies clicks to a volume."""
