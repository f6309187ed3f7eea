"""Named regions of MediaPipe's 478-point face mesh: the landmark loops Emote measures and moves.

Indices into the face landmarks (the first 468 are the face mesh, 468-477 the irises). Measurement
(mouth opening, lid gaps, head pivot) and the renderer (mouth interior, eye patches, lids) use the
same names. "Right" is the subject's right, which appears on the left of a non-mirrored picture.
"""

from __future__ import annotations

import numpy as np

# Ordered loops.
FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
])  # fmt: skip
# Inner lip contour from the right mouth corner (78) along the upper lip to the
# left corner (308) and back along the lower lip.
INNER_LIPS = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95])
INNER_UPPER = INNER_LIPS[:11]  # corner to corner along the upper lip
INNER_LOWER = np.concatenate([INNER_LIPS[:1], INNER_LIPS[:10:-1], INNER_LIPS[10:11]])  # corner to corner, lower
OUTER_LIPS = np.array([
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
])  # fmt: skip
# Eye openings, outer corner, over the upper lid to the inner corner, back below.
RIGHT_EYE = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
LEFT_EYE = np.array([263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249])
RIGHT_UPPER_LID = RIGHT_EYE[1:8]  # outer to inner
LEFT_UPPER_LID = LEFT_EYE[1:8]
RIGHT_LOWER_LID = RIGHT_EYE[15:8:-1]  # outer to inner, column by column under the upper lid
LEFT_LOWER_LID = LEFT_EYE[15:8:-1]
# The rings of skin above each upper lid (lid fold), outer to inner.
RIGHT_LID_FOLD = np.array([247, 30, 29, 27, 28, 56, 190])
LEFT_LID_FOLD = np.array([467, 260, 259, 257, 258, 286, 414])
# The next rings up, under the brows.
RIGHT_BROW_SKIN = np.array([113, 225, 224, 223, 222, 221, 189])
LEFT_BROW_SKIN = np.array([342, 445, 444, 443, 442, 441, 413])
RIGHT_IRIS = np.arange(468, 473)  # centre then four rim points
LEFT_IRIS = np.arange(473, 478)
CHIN = 152
NOSE_BRIDGE = 168
