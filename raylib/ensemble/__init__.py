"""The jobs that score with an ensemble of trained models.

scoring   the ensemble itself: its members (checkpoints or MLflow runs), the check that each takes
          a store's features, class re-weighting, the mean of the members' class probabilities
evaluate  jobs/evaluate.py: the ensemble on a store's split -> metrics, predictions, an MLflow run
predict   jobs/predict.py: new clips -> the extraction graph (raylib.extract.graph) -> predictions
"""
