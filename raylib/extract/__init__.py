"""The extraction job (jobs/extract.py): clips -> faces + spectrograms -> features -> a Parquet feature store.

config      ExtractConfig, every flag of the job (torch-free: read by --help and by prediction)
preprocess  one clip's CPU stage: decode, detect and align faces, spectrogram
graph       the Ray Data graph's operators, shared by extraction and prediction: the CPU stage,
            the feature actors, the shard writer, the recipe a run stores
summary     a run's tally, efficiency and summary file
job         the driver: what is pending in the store, the graph run over it, the failure gate
"""
