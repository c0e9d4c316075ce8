"""Session data: format I/O, the datasplitter, and datasets."""

# Built-in dataset classes by config name (`datasplitter.dataset_class`).
DATASETS = {
    "ChunkDataset": "brain_gen.dataset.datasets:ChunkDataset",
    "ChunkDatasetContinuous": "brain_gen.dataset.datasets:ChunkDatasetContinuous",
    "ChunkDatasetClassification": "brain_gen.dataset.datasets:ChunkDatasetClassification",
    "BPEDataset": "brain_gen.dataset.text:BPEDataset",
}
