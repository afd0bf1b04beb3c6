"""Cohorts: many volumes in one ``unetseg predict`` run, resumable through a manifest, with a QC report."""
