"""Raw recordings (FIF, CTF, EDF/BDF, BrainVision, EEGLAB, BIDS) to training sessions, through MNE-Python."""
