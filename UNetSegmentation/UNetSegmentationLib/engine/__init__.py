"""The warm engine: one long-lived process (``unetseg serve``) that keeps models loaded and answers
requests read as JSON lines on stdin with the events of :mod:`..protocol.events` on stdout, each
carrying its request's ``id`` (:mod:`.requests`: the schema; :mod:`.server`: the loop;
:mod:`.client`: the Slicer-free side that starts and drives it)."""
