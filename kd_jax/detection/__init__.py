"""Faster R-CNN with FPN as detectron2 runs it (METHODS.md 13), with static shapes."""
