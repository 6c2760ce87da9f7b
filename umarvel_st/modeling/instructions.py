"""Named instructions shipped with every model: the first official phrasing of each M-BEIR task.

Use them with ``model.encode_query(items, prompt_name="mscoco_task0")``. Keys are ``<dataset>_task<id>``.
"""

from __future__ import annotations

MBEIR_INSTRUCTIONS: dict[str, str] = {
    "visualnews_task0": "Identify the news-related image in line with the described event.",
    "mscoco_task0": "Find me an everyday image that matches the given caption.",
    "fashion200k_task0": "Based on the following fashion description, retrieve the best matching image.",
    "webqa_task1": "Retrieve passages from Wikipedia that provide answers to the following question.",
    "edis_task2": "Find a news image that matches the provided caption.",
    "webqa_task2": "Find a Wikipedia image that answers this question.",
    "visualnews_task3": "Find a caption for the news in the given photo.",
    "mscoco_task3": "Find an image caption describing the following everyday image.",
    "fashion200k_task3": "Find a product description for the fashion item in the image.",
    "nights_task4": "Find a day-to-day image that looks similar to the provided image.",
    "oven_task6": "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
    "infoseek_task6": "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
    "fashioniq_task7": "Find a fashion image that aligns with the reference image and style note.",
    "cirr_task7": "Retrieve a day-to-day image that aligns with the modification instructions of the provided image.",
    "oven_task8": "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image.",
    "infoseek_task8": "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image.",
}
