"""A face's whole photo once its file is gone (a download is removed once analysed): the small
copy kept at analysis (media_previews, worker_pool._preview) is shown instead, and it goes with
the faces: forgetting a person (the dashboard's role, erase_person_faces) or retention deleting
a face deletes the copies of the photos it was in."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from media_decode import MediaError, preview_jpeg
from media_fixtures import faces_dir, png_bomb
from test_dashboard import biden, db, faces_of, signed_in  # noqa: F401
from test_dashboard_faces import images
from test_dashboard_support import filled_db, filled_template  # noqa: F401


def previews(db, media_item_ids: list[int]) -> int:
    return db.execute("SELECT count(*) FROM media_previews WHERE media_item_id = ANY(%s)",
                      (media_item_ids,)).fetchone()[0]


def test_the_whole_photo_is_its_kept_copy_once_the_file_is_gone(db, tmp_path):  # noqa: F811
    [(face, media)] = db.execute("SELECT id, media_item_id FROM face_embeddings WHERE state = 'review'").fetchall()
    # Kept at analysis by the real pipeline: a JPEG of at most 640 px on its long side.
    [(preview,)] = db.execute("SELECT preview_jpeg FROM media_previews WHERE media_item_id = %s", (media,)).fetchall()
    with Image.open(io.BytesIO(preview)) as picture:
        assert picture.format == "JPEG" and 0 < max(picture.size) <= 640
    db.execute("UPDATE media_jobs SET staged_path = %s WHERE media_item_id = %s", (str(tmp_path / "gone.jpg"), media))
    at = signed_in("review")
    [photo] = [e for e in at.expander if e.label == "Whole photo"]
    assert images(photo) == 1
    assert "A small copy kept when it was analysed (the file is not kept)." in [c.value for c in photo.caption]
    db.execute("DELETE FROM media_previews WHERE media_item_id = %s", (media,))
    at = signed_in("review")
    [photo] = [e for e in at.expander if e.label == "Whole photo"]
    assert images(photo) == 0                                   # neither file nor copy: no picture


def test_forgetting_a_person_deletes_the_copies_of_their_photos(db):  # noqa: F811
    person = biden(db)
    media = [r[0] for r in db.execute("SELECT DISTINCT media_item_id FROM face_embeddings WHERE topic_id = %s",
                                      (person,))]
    assert previews(db, media) == len(media) > 0
    others = db.execute("SELECT count(*) FROM media_previews WHERE NOT (media_item_id = ANY(%s))", (media,)).fetchone()[0]
    at = signed_in("person", person=str(person))
    at.text_input(key=f"forget_confirm_{person}").input(str(person)).run()
    at.button(key=f"forget_go_{person}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert faces_of(db, person) == []
    assert previews(db, media) == 0
    assert db.execute("SELECT count(*) FROM media_previews").fetchone()[0] == others   # the others' stay


def test_retention_of_a_pending_face_deletes_the_copy_of_its_photo(db):  # noqa: F811
    [(face, media)] = db.execute("SELECT id, media_item_id FROM face_embeddings WHERE state = 'pending' "
                                 "ORDER BY id LIMIT 1").fetchall()
    assert previews(db, [media]) == 1
    db.execute("UPDATE face_embeddings SET detection_timestamp = now() - interval '400 days' WHERE id = %s", (face,))
    from database import queries
    with db.transaction():
        db.execute(queries.retention_pending_faces, {"days": 180})
    assert previews(db, [media]) == 0


def test_the_kept_copy_is_upright_small_and_refuses_a_bomb(tmp_path):
    """Stored sideways with an EXIF tag (as a phone writes it): the copy is upright, as the crops
    are, 640 px on its long side; a decompression bomb is refused before any pixel is decoded."""
    upright = Image.open(faces_dir() / "barack_obama_01.jpg").convert("RGB")     # 910 x 1137
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "turn 90° clockwise to view"
    sideways = tmp_path / "sideways.jpg"
    upright.rotate(90, expand=True).save(sideways, format="JPEG", quality=92, exif=exif)
    with Image.open(io.BytesIO(preview_jpeg(sideways))) as copy:
        assert copy.size == (512, 640)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    with pytest.raises(MediaError, match="decompression bomb"):
        preview_jpeg(bomb)
