"""Draws the icon of the "UNet refine" Segment Editor effect: a segment's outline (an axial lung in
orange) being corrected by two clicks, a green "+" that adds and a red "-" that removes, with a small
U (the network) in the corner. 64x64 RGBA (Segment Editor shows effect icons small), drawn at 8x and
downsampled. Usage: ``python Resources/Tools/make_refine_icon.py UNetSegmentation/Resources/Icons/UNetRefine.png``."""
import sys

from PIL import Image, ImageDraw, ImageFilter

S = 512
img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
d = ImageDraw.Draw(img)
d.rounded_rectangle([12, 12, S - 12, S - 12], radius=80, fill=(22, 36, 64, 255))

# the segment: a lung-like blob, translucent fill and a crisp outline, with a dent being corrected
segment = Image.new("RGBA", (S, S), (0, 0, 0, 0))
sd = ImageDraw.Draw(segment)
sd.ellipse([96, 80, 356, 440], fill=(250, 170, 40, 140), outline=(255, 205, 90, 255), width=14)
sd.ellipse([250, 210, 380, 330], fill=(0, 0, 0, 0))
segment = segment.filter(ImageFilter.GaussianBlur(1))
img.alpha_composite(segment)
# the corrected boundary: a dashed white line where the click moved it
for y in range(120, 400, 44):
    d.line([(372, y), (392, y + 22)], fill=(255, 255, 255, 230), width=10)


def click(centre, colour, sign):
    x, y = centre
    d.ellipse([x - 62, y - 62, x + 62, y + 62], fill=(0, 0, 0, 110))
    d.ellipse([x - 54, y - 54, x + 54, y + 54], fill=colour, outline=(255, 255, 255, 255), width=10)
    d.line([(x - 28, y), (x + 28, y)], fill=(255, 255, 255, 255), width=16)
    if sign == "+":
        d.line([(x, y - 28), (x, y + 28)], fill=(255, 255, 255, 255), width=16)


click((400, 150), (40, 170, 90, 255), "+")
click((400, 370), (210, 50, 50, 255), "-")

# a small U in the top-left corner: the network answering the clicks
x0, x1, top, bottom = 60, 150, 48, 150
r = (x1 - x0) // 2
for colour, width in (((64, 200, 230, 255), 26), ((255, 255, 255, 255), 12)):
    d.line([(x0, top), (x0, bottom - r)], fill=colour, width=width)
    d.line([(x1, top), (x1, bottom - r)], fill=colour, width=width)
    d.arc([x0, bottom - 2 * r, x1, bottom], start=0, end=180, fill=colour, width=width)

out = img.resize((64, 64), Image.LANCZOS)
for path in sys.argv[1:]:
    out.save(path)
