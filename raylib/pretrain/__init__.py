"""The pretraining job (jobs/pretrain.py): expression images -> a face backbone or a linear probe (Table 1).

config   PretrainConfig, every flag of the job
loop     the Ray Train workers' loop
table1   the Table-1 grid of linear probes
job      the driver
"""
