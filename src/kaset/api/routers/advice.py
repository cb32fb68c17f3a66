"""POST /v1/advice: grounded crop advice in Thai or English."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from kaset.api.deps import AdvisorDep, require_json
from kaset.api.policy import policy
from kaset.api.schemas.advice import AdviceRequest, AdviceResponse, Citation, SourceRef
from kaset.pipelines.advice import Advice, AdviceQuery

router = APIRouter(tags=["crop guardian"], dependencies=[Depends(require_json)])


def citations(result: Advice) -> list[Citation]:
    """The entries an answer was grounded on, with their sources (also used by the pipelines)."""
    return [
        Citation(id=hit.entry.id, name=hit.entry.content(result.language).name, crop=hit.entry.crop,
                 score=round(hit.score, 4),
                 sources=[SourceRef(**s.model_dump()) for s in hit.entry.sources])
        for hit in result.hits
    ]


def to_response(result: Advice) -> AdviceResponse:
    """The /v1/advice response object for an answer (the crop doctor embeds it as it is)."""
    return AdviceResponse(answer=result.answer, language=result.language, path=result.path,
                          curated_answer=result.curated, llm_model=result.llm_model,
                          llm_rejected=result.llm_rejected, citations=citations(result), notes=result.notes,
                          understood=result.understood, match_score=round(result.match_score, 4))


@policy(budgets=("tokens_per_day",))
@router.post("/v1/advice", response_model=AdviceResponse)
async def advice(body: AdviceRequest, advisor: AdvisorDep) -> AdviceResponse:
    query = AdviceQuery(question=body.question, language=body.language, crop=body.crop, diagnosis=body.diagnosis,
                        region=body.region, month=body.month, top_k=body.top_k, use_llm=body.use_llm)
    return to_response(await advisor.advise(query))
