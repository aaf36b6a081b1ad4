"""The IoU tally: labels encoded per image (labelstore), upsampling, counts (vectorized or the
fused C kernel), label combinations for formulas."""
