"""Regenerate the small example media in this folder (deterministic, Pillow only).

    python examples/make_examples.py

red_circle.png      300x200 RGB still image, a red circle in the center on dark grey: 300x200 -> padded
                    308x224, 88 tokens
alpha_badge.png     96x64 RGBA image whose transparent corners store blue: the pipeline drops alpha, so
                    the corners reach the model blue, not white or black
moving_square.gif   30 frames at 100 ms (10 fps, 3 s), 64x48: sampled at 2 fps -> frames 0 6 12 17 | 23 29,
                    two chunks (t=4, t=2) stamped 00:00:00.000 and 00:00:02.299
"""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent


def red_circle():
    # a background the shapes world has: far from all seven object colours (k25ref.shapes' fallback colour)
    image = Image.new("RGB", (300, 200), (30, 30, 30))
    ImageDraw.Draw(image).ellipse((90, 40, 210, 160), fill=(220, 20, 30), outline=(0, 0, 0), width=3)
    image.save(HERE / "red_circle.png", optimize=True)


def alpha_badge():
    image = Image.new("RGBA", (96, 64), (0, 0, 255, 0))  # fully transparent, but the stored colour is blue
    ImageDraw.Draw(image).rounded_rectangle((4, 4, 91, 59), radius=16, fill=(250, 200, 0, 255))
    image.save(HERE / "alpha_badge.png", optimize=True)


def moving_square():
    frames = []
    for k in range(30):
        frame = Image.new("RGB", (64, 48), (20, 20, 60))
        x = 2 * k  # the square crosses the frame left to right, 2 px per frame
        ImageDraw.Draw(frame).rectangle((x, 16, x + 9, 25), fill=(255, 230, 0))
        frames.append(frame)
    frames[0].save(HERE / "moving_square.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)


if __name__ == "__main__":
    red_circle()
    alpha_badge()
    moving_square()
