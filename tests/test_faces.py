import numpy as np
import pytest
from PIL import Image

from raylib.media import faces as F
from raylib.media.video import decode_video


def eye_centres(chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eye centres in a chip, from dlib's 5-point model run on the chip itself."""
    import dlib

    box = F.detect_face(chip, F.FaceConfig(detect_max_side=0, threshold=0.0))
    assert box is not None, "no face found again inside the aligned chip"
    shape = F._landmarks()(chip, dlib.rectangle(*(int(v) for v in box[:4])))
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
    a, b = p[0:2].mean(0), p[2:4].mean(0)
    return (a, b) if a[0] < b[0] else (b, a)


def assert_aligned(chip: np.ndarray):
    assert chip.shape == (224, 224, 3) and chip.dtype == np.uint8
    left, right = eye_centres(chip)
    # dlib's chip template with 30% padding puts the eyes ~0.33 of the height down, level,
    # and symmetric about the vertical midline
    for eye in (left, right):
        assert 0.25 * 224 < eye[1] < 0.42 * 224
    assert abs(left[1] - right[1]) < 0.03 * 224
    assert abs((left[0] + right[0]) / 2 - 112) < 0.05 * 224
    assert 0.2 * 224 < right[0] - left[0] < 0.45 * 224


def test_real_photograph_has_exactly_one_face_aligned(astronaut):
    rects, scores, _ = F._detector().run(astronaut, 0, F.DETECT_THRESHOLD)
    assert len(rects) == 1
    faces = F.align_frames(astronaut[None])
    assert faces.found.tolist() == [True]
    assert faces.scores[0] > 1.0
    assert_aligned(faces.chips[0])


@pytest.mark.parametrize("angle, shift", [(20, (0, 0)), (-15, (60, -30)), (8, (-80, 40))])
def test_rotated_and_shifted_faces_still_align(astronaut, angle, shift):
    im = Image.fromarray(astronaut).rotate(angle, resample=Image.BILINEAR, translate=shift, fillcolor=(128, 128, 128))
    faces = F.align_frames(np.asarray(im)[None])
    assert faces.found[0]
    assert_aligned(faces.chips[0])


def test_box_from_the_downscaled_frame_maps_back_to_full_resolution(astronaut):
    big = F.resize(astronaut, 1024, 1024)  # face ~175 px; ~70 px once downscaled to 400
    full = F.detect_face(big, F.FaceConfig(detect_max_side=0))
    small = F.detect_face(big, F.FaceConfig(detect_max_side=400, retry_full_resolution=False))
    assert full is not None and small is not None
    iou_inter = max(0, min(full[2], small[2]) - max(full[0], small[0])) * max(0, min(full[3], small[3]) - max(full[1], small[1]))
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
    assert iou_inter / (area(full) + area(small) - iou_inter) > 0.7


def test_faceless_frame_falls_back_to_the_whole_frame():
    from skimage import data

    coffee = data.coffee()
    faces = F.align_frames(coffee[None])
    assert faces.found.tolist() == [False]
    assert faces.boxes[0].tolist() == [-1, -1, -1, -1]
    np.testing.assert_array_equal(faces.chips[0], F.resize(coffee, 224, 224))


def test_largest_face_is_chosen(astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    canvas = np.full((512, 1024, 3), 128, np.uint8)
    canvas[:, :512] = astronaut
    canvas[128:384, 700:956] = small
    box = F.detect_face(canvas, F.FaceConfig(detect_max_side=0))
    assert box is not None and box[0] < 512  # the full-size face on the left


def test_cremad_frames_all_have_an_aligned_face(cremad_clips):
    v = decode_video(cremad_clips[3], "uniform:6")
    faces = F.align_frames(v.frames)
    assert faces.found.all()
    assert_aligned(faces.chips[0])


def test_models_load_once_per_process():
    assert F._detector() is F._detector()
    assert F._landmarks() is F._landmarks()
    assert F.dlib_model_path(F.LANDMARKS_MODEL).endswith("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(FileNotFoundError, match="not found"):
        F.dlib_model_path("no_such_model.dat")


def moving_face_frames(astronaut, n=12):
    """The photograph drifting and turning a little from frame to frame."""
    out = []
    for i in range(n):
        im = Image.fromarray(astronaut).rotate(1.5 * i - 8, resample=Image.BILINEAR, translate=(4 * i - 20, 2 * i),
                                               fillcolor=(128, 128, 128))
        out.append(np.asarray(im))
    return np.stack(out)


def box_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_tracked_boxes_agree_with_detection_on_every_frame(astronaut):
    frames = moving_face_frames(astronaut)
    tracked = F.align_frames(frames, F.FaceConfig(detect_every=4))
    detected = F.align_frames(frames, F.FaceConfig(detect_every=1))
    assert tracked.found.all() and detected.found.all()
    ious = [box_iou(a, b) for a, b in zip(tracked.boxes, detected.boxes)]
    assert np.mean(ious) > 0.8 and sum(i > 0.7 for i in ious) >= 10, ious
    for chip in tracked.chips[[1, 2, 3, 5]]:  # frames that were tracked, not detected
        assert_aligned(chip)


def test_a_cut_to_a_faceless_shot_is_not_tracked_into(astronaut):
    from skimage import data

    coffee = F.resize(data.coffee(), 512, 512)
    frames = np.concatenate([moving_face_frames(astronaut, 2), np.stack([coffee] * 3)])
    faces = F.align_frames(frames, F.FaceConfig(detect_every=8))
    assert faces.found.tolist() == [True, True, False, False, False]


def test_the_cnn_finds_faces_hog_misses_and_they_are_aligned(astronaut):
    # footage of 64 x 64 pixels shown at 512: HOG finds nothing, the CNN finds the face
    soft = np.asarray(Image.fromarray(astronaut).resize((64, 64)).resize((512, 512), Image.BILINEAR))
    turned = np.asarray(Image.fromarray(astronaut).rotate(60, fillcolor=(128, 128, 128)))  # HOG fails past ~45 deg
    hog = F.align_frames(np.stack([soft, turned]), F.FaceConfig(detector="hog", detect_every=1))
    both = F.align_frames(np.stack([soft, turned]), F.FaceConfig(detector="hog+cnn", detect_every=1))
    assert hog.found.tolist() == [False, False] and hog.counts.tolist() == [0, 0]
    assert both.found.tolist() == [True, True] and both.counts.tolist() == [1, 1]
    assert_aligned(both.chips[0])
    with pytest.raises(ValueError, match="unknown face detector 'retina'"):
        F.FaceConfig(detector="retina")


def test_a_lost_face_is_not_swapped_for_a_much_smaller_one_in_the_same_shot(astronaut):
    main = np.asarray(Image.fromarray(astronaut).resize((768, 768)))
    small = np.asarray(Image.fromarray(astronaut).resize((380, 380)))  # its face: ~1/3 of the main one's side
    canvas = np.full((768, 1536, 3), 128, np.uint8)
    canvas[:, :768] = main
    canvas[388:768, 1150:1530] = small  # a second person, far smaller and off-centre
    full = F.FaceConfig(detector="hog", detect_every=1, detect_max_side=0)  # both faces at full resolution
    x0, y0, x1, y1 = F.detect_face(main, full)[:4]
    hidden = canvas.copy()
    hidden[int(y0):int(y1), int(x0):int(x1)] = 128  # the main face turns away / is covered
    faces = F.align_frames(np.stack([canvas, canvas, hidden]), full)
    assert faces.found.tolist() == [True, True, False]  # whole-frame fallback, not the background face
    assert faces.boxes[1][0] < 768 and faces.counts.tolist() == [2, 2, 1]
    # a new shot holding only the small face: it is the main face there
    alone = np.full((768, 1536, 3), 40, np.uint8)
    alone[388:768, 1150:1530] = small
    faces = F.align_frames(np.stack([canvas, alone]), full)
    assert faces.found.tolist() == [True, True] and faces.boxes[1][0] > 1100
