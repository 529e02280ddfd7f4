"""Faster R-CNN with FPN as detectron2 runs it (METHODS.md 13), with static shapes.

Padded boxes and proposals with validity masks, so one program compiles per input size.
Boxes are float32 (x1, y1, x2, y2) in input-image pixels; classes 0..K-1 are foreground
and K is background, as detectron2.
"""
