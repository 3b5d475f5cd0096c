"""rga: textual backdoor attacks and backdoor unlearning (ReTrain, GA, NPO, RGA) as a DVC pipeline.

Reproduces "Don't Shift the Trigger: Robust Gradient Ascent for Backdoor Unlearning".
Modules: data, attacks, models, training, evaluation, detection, unlearning, report.
"""

__version__ = "0.1.0"
