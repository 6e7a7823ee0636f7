"""The training jobs: jobs/train.py (one FusionModel trained with Ray Train, tracked in MLflow) and
jobs/tune.py (the attention x fusion sweep of Table 2, each trial a training run).

config     TrainConfig, every flag of jobs/train.py, and what a store holds for training (store_info)
loop       the Ray Train workers' loop (epochs, checkpoints, metrics)
artifacts  a finished run's plots, checkpoint and logged model
job        the training driver: one run, or cross-validation by speaker folds
sweep      the sweep: TuneConfig, the Ray Tune driver, the Table-2 report
"""
