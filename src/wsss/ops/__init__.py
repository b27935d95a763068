"""Operations: S3 storage (boto3), dataset drops (list → fetch → validate → merge or quarantine), the local
development stack and the S3 set-up. The retraining flow (`flows/retrain.py`) strings them together."""
