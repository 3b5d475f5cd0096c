"""Built-in unlearning methods, one module each (``ga``, ``npo``, ``rga``, ``dga``, ``simnpo``, ``ft``).

Each module registers one loss with :func:`rga.unlearning.register`; the shared loop in
:mod:`rga.unlearning` imports a method's module only when that method runs, and each
``unlearn@<cell>-<method>`` stage depends on ``src/rga/unlearning.py`` plus its own module, so
editing or adding one method re-runs only its own cells. Keep this file free of code.
"""
