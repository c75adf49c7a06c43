"""``check``: verify the store's own links and that the index holds exactly the stored vectors;
``repair`` rebuilds the derived index from LMDB (never the other way round)."""
from __future__ import annotations

from typing import Any

from bellm_search._fs import file_sha256
from bellm_search.collection.lock import writer_lock
from bellm_search.collection.manifest import INDEX_FILE
from bellm_search.errors import CollectionError

MAX_PROBLEMS = 50


def check(coll: Any, repair: bool = False) -> dict[str, Any]:
    """See ``Collection.check``."""
    problems = check_store(coll.store) + check_index(coll)
    repaired = False
    if repair and problems:
        coll.check_writable()
        with writer_lock(coll.path):
            coll.index_state.rebuild(strict=False)
        repaired = True
        after = check_store(coll.store) + check_index(coll)
    else:
        after = problems
    return {"ok": not after, "problems": problems, "repaired": repaired, "remaining": after}


def check_store(store: Any) -> list[str]:
    """Every live record is reachable by its id and has a text; counts and link tables agree."""
    problems = []
    live = links = 0
    for int_id, doc in store.iter_docs():
        live += 1
        links += "dup_of" in doc
        if store.lookup_key(doc.get("id", "")) != int_id:
            problems.append(f"document {int_id}: id map does not point back to it")
        if "dup_of" not in doc and not isinstance(doc.get("text"), str):
            problems.append(f"document {int_id}: record without text")
    if live != store.count():
        problems.append(f"document count {store.count()} but {live} live records")
    table = len(store.dup_links()[0])
    if links != table:
        problems.append(f"{links} records are duplicates but the duplicate-link table holds {table}")
    return problems[:MAX_PROBLEMS]


def check_index(coll: Any) -> list[str]:
    """index.faiss is present, matches its recorded checksum, loads, and (caught up) holds as many
    vectors as are stored. Loads its own copy: the collection's loaded index is left alone."""
    state, file = coll.manifest["index"], coll.path / INDEX_FILE
    if not state.get("factory"):
        return []  # never saved (a first ingest was killed): every open builds it from the stored vectors
    if not file.is_file():
        return [f"{INDEX_FILE} is missing"]
    if state.get("sha256") and file_sha256(file) not in (state["sha256"], state.get("next_sha256")):
        return [f"{INDEX_FILE} does not match the checksum in the manifest (corrupt or replaced)"]
    try:
        index = coll.index_state.load_saved()
    except CollectionError as exc:
        return [str(exc)]
    stored = coll.store.num_vectors()
    if index.ntotal != stored:
        return [f"index holds {index.ntotal} vectors but {stored} are stored"]
    return []
